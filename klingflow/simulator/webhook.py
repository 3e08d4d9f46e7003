"""`?fal_webhook=URL`: when a request ends, POST fal's webhook payload to the URL, retrying failed
deliveries (non-2xx, timeout, connection error) with backoff as fal does (SimulatorConfig.webhook_*).

Payload: `{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error?}` with the
X-Fal-Webhook-Request-Id / -User-Id / -Timestamp headers. Registrations live in memory only: a
restarted simulator does not deliver webhooks of requests submitted before the restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from klingflow.simulator.config import SimulatorConfig
from klingflow.simulator.counters import Counters
from klingflow.simulator.models import RequestRecord
from klingflow.simulator.protocol import output_body


def webhook_payload(rec: RequestRecord, base: str) -> dict[str, Any]:
    """fal's webhook body for a finished request."""
    body: dict[str, Any] = {"request_id": rec.request_id, "gateway_request_id": rec.request_id}
    output = output_body(rec, base)
    if output is not None:
        return {**body, "status": "OK", "payload": output}
    return {
        **body,
        "status": "ERROR",
        "error": f"Invalid status code: {rec.error_status or 500}",
        "payload": rec.error_body,
    }


def backoff_s(config: SimulatorConfig, attempt: int) -> float:
    """Delay before retry number `attempt` (1-based): exponential from webhook_retry_base_s, capped."""
    return min(config.webhook_retry_base_s * 2 ** (attempt - 1), config.webhook_retry_max_s)


class Webhooks:
    """Webhook URLs by request id, and their delivery when the queue completes a request."""

    def __init__(self, config: SimulatorConfig, counters: Counters) -> None:
        self.config, self.counters = config, counters
        self._targets: dict[str, tuple[str, str]] = {}  # request id -> (webhook url, our base url)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def register(self, request_id: str, url: str, base: str) -> None:
        """Deliver this request's result to `url` when it ends."""
        self._targets[request_id] = (url, base)

    def completed(self, rec: RequestRecord) -> None:
        """Queue listener: start delivery if the request has a webhook."""
        target = self._targets.pop(rec.request_id, None)
        if target is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(rec, *target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Abandon pending deliveries (a stopped fal delivers nothing)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _deliver(self, rec: RequestRecord, url: str, base: str) -> None:
        body = webhook_payload(rec, base)
        headers = {
            "x-fal-webhook-request-id": rec.request_id,
            "x-fal-webhook-user-id": rec.key_id,
            "x-fal-webhook-timestamp": str(int(time.time())),
        }
        for attempt in range(self.config.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(backoff_s(self.config, attempt))
            if await self._post(url, body, headers):
                self.counters.add("webhooks_delivered")
                return
        self.counters.add("webhooks_failed")

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> bool:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.webhook_timeout_s)
        self.counters.add("webhook_attempts")
        try:
            response = await self._http.post(url, json=body, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success
