"""Settling a submission whose outcome is unknown, through fal's request history.

If a run dies between writing "submitting" and learning the request id, fal may hold a request
klingflow has no id for. fal's platform API lists an endpoint's requests with their input
payloads (`GET /v1/models/requests/by-endpoint?expand=payloads`); the simulator serves the same
route. A request whose input hashes to what the crashed run was sending is adopted (resumed by id)
instead of submitting again. What remains: if fal's history lags or omits requests that are still
queued, such a request is not found and the job is submitted again — see the README.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from klingflow.fal.backend import BackendSession
from klingflow.models import Backend

FAL_PLATFORM_API = "https://api.fal.ai/v1"
PAGE_LIMIT = 100
MAX_PAGES = 20
LOOKBACK_S = 300.0  # clock skew and queueing margin before the "submitting" mark


class HistoryUnavailable(Exception):
    """The request history could not be read; the outcome stays unknown."""


def payload_sha256(arguments: dict[str, Any]) -> str:
    """A stable hash of a request's input, as sent and as fal lists it back."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def platform_url(session: BackendSession) -> str:
    return FAL_PLATFORM_API if session.kind is Backend.fal else f"{session.base_url}/v1"


async def find_request(session: BackendSession, endpoint: str, digest: str, since_epoch: float) -> str | None:
    """The id of a request to `endpoint` sent after `since_epoch` whose input hashes to `digest`, if any."""
    start = datetime.fromtimestamp(since_epoch - LOOKBACK_S, UTC).isoformat(timespec="seconds")
    params: dict[str, Any] = {"endpoint_id": endpoint, "start": start, "expand": "payloads", "limit": PAGE_LIMIT}
    headers = {"Authorization": f"Key {session.key}"}
    url = f"{platform_url(session)}/models/requests/by-endpoint"
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as http:
        for _ in range(MAX_PAGES):
            try:
                response = await http.get(url, params=params)
                response.raise_for_status()
                page = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise HistoryUnavailable(f"{exc.__class__.__name__}: {exc}") from exc
            for item in page.get("items", []):
                if isinstance(item.get("json_input"), dict) and payload_sha256(item["json_input"]) == digest:
                    return str(item["request_id"])
            if not page.get("has_more") or not page.get("next_cursor"):
                return None
            params["cursor"] = page["next_cursor"]
    return None
