"""Streaming status, `GET …/requests/{id}/status/stream`: server-sent events, one `data:` line with the
status body (the polling route's JSON) whenever the status or the logs change, closed after COMPLETED.
This is what the JS client's `queue.streamStatus` and `subscribe({mode: "streaming"})` read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from klingflow.simulator.guard import guarded
from klingflow.simulator.models import RequestRecord
from klingflow.simulator.protocol import status_body
from klingflow.simulator.responses import not_found
from klingflow.simulator.routes_queue import KNOWN_APPS, TRUTHY, base_url
from klingflow.simulator.state import SimState

POLL_S = 0.05  # how often the stream looks for a change (records live on this event loop)


def stream_routes(state: SimState) -> list[Route]:
    """The SSE status route (must come before the queue's catch-all)."""
    queue = state.queue

    async def events(rec: RequestRecord, base: str, with_logs: bool) -> AsyncIterator[bytes]:
        last: str | None = None
        while True:
            body, _ = status_body(rec, base, queue.queue_position(rec), with_logs=with_logs)
            text = json.dumps(body)
            if text != last:
                last = text
                yield f"data: {text}\n\n".encode()
            if rec.status == "COMPLETED":
                return
            await asyncio.sleep(POLL_S)

    async def stream(request: Request) -> Response:
        rec = queue.get(request.path_params["request_id"])
        if request.path_params["app"] not in KNOWN_APPS or rec is None:
            return not_found()
        with_logs = request.query_params.get("logs", "").lower() in TRUTHY
        headers = {"x-fal-request-id": rec.request_id, "cache-control": "no-cache"}
        return StreamingResponse(
            events(rec, base_url(request), with_logs), media_type="text/event-stream", headers=headers
        )

    path = "/{app:path}/requests/{request_id}/status/stream"
    return [Route(path, guarded(state, "status", "key", stream), methods=["GET"])]
