"""fal's platform API: request history (`GET /v1/models/requests/by-endpoint`).

Unlike (possibly) real fal, every accepted request of the caller's key is listed — queued, running
and completed (`ended_at`/`status_code` null until it finishes) — so a run that lost a submit's
answer can find and adopt the request. Items are newest first, filtered by `sent_at` in [start, end).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.auth import key_from_header, key_id
from klingflow.simulator.models import Outcome, RequestRecord, utcnow
from klingflow.simulator.protocol import output_body
from klingflow.simulator.responses import unauthorized
from klingflow.simulator.routes_queue import base_url
from klingflow.simulator.state import SimState

DEFAULT_LIMIT, MAX_LIMIT = 50, 100
DEFAULT_WINDOW = timedelta(hours=24)
STATUS_FILTERS = frozenset({"success", "error", "user_error"})


class QueryError(Exception):
    """A bad query parameter, answered as a fal-style 422."""

    def __init__(self, field: str, msg: str, kind: str) -> None:
        super().__init__(msg)
        self.detail = {"loc": ["query", field], "msg": msg, "type": kind}


def _multi(request: Request, name: str) -> list[str]:
    """A parameter given repeated and/or as a comma-separated list."""
    return [part.strip() for raw in request.query_params.getlist(name) for part in raw.split(",") if part.strip()]


def _instant(request: Request, name: str) -> datetime | None:
    """An ISO8601 datetime or date parameter as aware UTC (naive values are taken as UTC)."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # an unencoded '+' arrives as a space
    except ValueError:
        try:
            value = datetime.combine(date.fromisoformat(raw), datetime.min.time())
        except ValueError:
            raise QueryError(name, "Input should be a valid datetime or date", "datetime_from_date_parsing") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise QueryError("limit", f"Input should be an integer between 1 and {MAX_LIMIT}", "int_parsing")
    return int(raw)


def encode_cursor(offset: int) -> str:
    """The opaque cursor of the page starting at `offset`."""
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _offset(request: Request) -> int:
    raw = request.query_params.get("cursor")
    if not raw:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not (text.isascii() and text.isdigit()):
        raise QueryError("cursor", "Invalid cursor", "value_error")
    return int(text)


def status_code(rec: RequestRecord) -> int | None:
    """The HTTP status the request ended with (None while it is not finished)."""
    if rec.status != "COMPLETED":
        return None
    return 200 if rec.outcome is Outcome.OK else rec.error_status or 500


def _status_class(code: int | None) -> str | None:
    if code is None:
        return None
    return "success" if code < 400 else "user_error" if code < 500 else "error"


def _output(rec: RequestRecord, base: str) -> Any:
    """The result body of a completed request (its error body if it failed)."""
    if rec.status != "COMPLETED":
        return None
    output = output_body(rec, base)
    return rec.error_body if output is None else output


def history_item(rec: RequestRecord, base: str, *, payloads: bool) -> dict[str, Any]:
    """One `items[]` entry."""
    ended = rec.completed_at if rec.status == "COMPLETED" else None
    duration = (ended - (rec.started_at or rec.submitted_at)).total_seconds() if ended else None
    item: dict[str, Any] = {
        "request_id": rec.request_id,
        "endpoint_id": rec.endpoint,
        "sent_at": rec.submitted_at.isoformat(),
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "ended_at": ended.isoformat() if ended else None,
        "status_code": status_code(rec),
        "duration": duration,
    }
    if payloads:
        item |= {"json_input": rec.input, "json_output": _output(rec, base)}
    return item


@dataclass(frozen=True)
class HistoryQuery:
    """The parsed query of one history call."""

    key_id: str
    endpoints: frozenset[str]
    start: datetime
    end: datetime | None
    statuses: frozenset[str]
    request_ids: frozenset[str]
    limit: int
    offset: int
    payloads: bool

    @classmethod
    def parse(cls, request: Request, owner: str) -> HistoryQuery:
        """Read and check the query parameters (raises QueryError)."""
        endpoints = frozenset(_multi(request, "endpoint_id"))
        if not endpoints:
            raise QueryError("endpoint_id", "Field required", "missing")
        statuses = frozenset(_multi(request, "status"))
        if statuses - STATUS_FILTERS:
            raise QueryError("status", f"Input should be one of {', '.join(sorted(STATUS_FILTERS))}", "enum")
        return cls(
            key_id=owner,
            endpoints=endpoints,
            start=_instant(request, "start") or utcnow() - DEFAULT_WINDOW,
            end=_instant(request, "end"),
            statuses=statuses,
            request_ids=frozenset(_multi(request, "request_id")),
            limit=_limit(request),
            offset=_offset(request),
            payloads="payloads" in _multi(request, "expand"),
        )

    def matches(self, rec: RequestRecord) -> bool:
        """Whether a record belongs to the caller and passes every filter."""
        return (
            rec.key_id == self.key_id
            and rec.endpoint in self.endpoints
            and self.start <= rec.submitted_at
            and (self.end is None or rec.submitted_at < self.end)
            and (not self.statuses or _status_class(status_code(rec)) in self.statuses)
            and (not self.request_ids or rec.request_id in self.request_ids)
        )


def history_page(records: list[RequestRecord], query: HistoryQuery, base: str) -> dict[str, Any]:
    """The page of matching records, newest first, with the cursor of the next one."""
    rows = sorted(filter(query.matches, records), key=lambda r: (r.submitted_at, r.request_id), reverse=True)
    end = query.offset + query.limit
    has_more = end < len(rows)
    return {
        "items": [history_item(rec, base, payloads=query.payloads) for rec in rows[query.offset : end]],
        "next_cursor": encode_cursor(end) if has_more else None,
        "has_more": has_more,
    }


def platform_routes(state: SimState) -> list[Route]:
    """Platform API routes; they must precede the queue routes (whose paths would swallow them).

    Counted and keyed like the queue routes, but no HTTP faults are injected (FaultConfig has no
    platform route kind).
    """

    async def by_endpoint(request: Request) -> Response:
        state.counters.call("history")
        key = key_from_header(request.headers.get("authorization"))
        if key is None:
            return unauthorized()
        try:
            query = HistoryQuery.parse(request, key_id(key))
        except QueryError as exc:
            return JSONResponse({"detail": [exc.detail]}, 422)
        return JSONResponse(history_page(state.queue.views(), query, base_url(request)))

    return [Route("/v1/models/requests/by-endpoint", by_endpoint, methods=["GET"])]
