"""Synchronous runs, `POST {base}/run/<endpoint>` (fal's `https://fal.run/<endpoint>`; Python
`fal_client.run`, JS `fal.run`): the request goes through the same queue (same concurrency, same one
charge) and the answer is the model's output or its error, never a queue ticket. The run base is
distinct from the queue base so both clients can be pointed at the simulator at once."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.guard import guarded
from klingflow.simulator.models import RequestRecord
from klingflow.simulator.protocol import result_response
from klingflow.simulator.routes_queue import base_url, enqueue
from klingflow.simulator.state import SimState

RUN_PREFIX = "/run"
POLL_S = 0.05


def run_routes(state: SimState) -> list[Route]:
    """The sync run route (before the queue's catch-all)."""

    async def finished(rec: RequestRecord) -> bool:
        deadline = asyncio.get_running_loop().time() + state.config.sync_run_timeout_s
        while rec.status != "COMPLETED":
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def run(request: Request) -> Response:
        rec = await enqueue(state, request)
        if isinstance(rec, Response):
            return rec
        if not await finished(rec):
            state.queue.cancel(rec)
            body = {"detail": "Request timed out", "error_type": "request_timeout"}
            return JSONResponse(body, 504, headers={"x-fal-request-id": rec.request_id})
        return result_response(rec, base_url(request))

    return [Route(RUN_PREFIX + "/{app:path}", guarded(state, "submit", "key", run), methods=["POST"])]
