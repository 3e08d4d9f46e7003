"""Admin routes under /_simulator/ (no auth): health, ledger, counters, requests, faults."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.config import FaultConfig
from klingflow.simulator.state import SimState


def admin_routes(state: SimState) -> list[Route]:
    """Introspection and runtime control for tests, benchmarks and the demo."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "requests": len(state.queue.records)})

    async def ledger(request: Request) -> Response:
        return JSONResponse([e.model_dump(mode="json") for e in state.ledger.entries()])

    async def counters(request: Request) -> Response:
        return JSONResponse(state.counters.snapshot())

    async def reset_peaks(request: Request) -> Response:
        state.counters.reset_peaks()
        return JSONResponse(state.counters.snapshot()["keys"])

    async def requests(request: Request) -> Response:
        rows = [
            rec.model_dump(mode="json", include=REQUEST_FIELDS) | {"queue_position": state.queue.queue_position(rec)}
            for rec in state.queue.views()
        ]
        return JSONResponse(rows)

    async def get_faults(request: Request) -> Response:
        return JSONResponse(state.faults.config.model_dump(mode="json"))

    async def put_faults(request: Request) -> Response:
        try:
            config = FaultConfig.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"detail": exc.errors(include_url=False, include_context=False)}, 422)
        state.faults.set_config(config)
        return JSONResponse(config.model_dump(mode="json"))

    return [
        Route("/_simulator/health", health, methods=["GET"]),
        Route("/_simulator/ledger", ledger, methods=["GET"]),
        Route("/_simulator/counters", counters, methods=["GET"]),
        Route("/_simulator/counters/reset-peaks", reset_peaks, methods=["POST"]),
        Route("/_simulator/requests", requests, methods=["GET"]),
        Route("/_simulator/faults", get_faults, methods=["GET"]),
        Route("/_simulator/faults", put_faults, methods=["PUT"]),
    ]


REQUEST_FIELDS = {
    "request_id",
    "key_id",
    "status",
    "outcome",
    "submitted_at",
    "started_at",
    "completed_at",
    "fault",
    "store_io",
    "error",
    "error_type",
    "billed_seconds",
    "inference_time_s",
}
