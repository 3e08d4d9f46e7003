"""Queue routes: submit, status, result, cancel (fal_client's view, fal-protocol.md section 2), and
the 404 for every path no route knows."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator.guard import guarded
from klingflow.simulator.models import RequestRecord
from klingflow.simulator.protocol import APP_PREFIX, result_response, status_body, submit_body
from klingflow.simulator.responses import not_found, too_many_requests
from klingflow.simulator.state import SimState
from klingflow.simulator.tags import parse_tags

KNOWN_APPS = frozenset({APP_PREFIX, ENDPOINT_ID})
TRUTHY = frozenset({"1", "true", "yes"})
FALSY = frozenset({"0", "false", "no"})
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # Starlette's default is GET only
# the older and the newer (newest fal_client) name of the same time-to-start deadline
START_TIMEOUT_HEADERS = ("x-fal-request-timeout", "x-fal-request-start-timeout")


def base_url(request: Request) -> str:
    """The caller's view of our base URL (absolute loopback URLs in every response)."""
    return str(request.base_url).rstrip("/")


def _seconds(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def _start_timeout(request: Request) -> float | None:
    """The start deadline in seconds; if both header names are sent the shorter one holds."""
    values = [v for name in START_TIMEOUT_HEADERS if (v := _seconds(request.headers.get(name))) is not None]
    return min(values, default=None)


def _store_io(request: Request) -> bool:
    """False when the caller opted out of payload storage with `X-Fal-Store-IO: 0`."""
    return request.headers.get("x-fal-store-io", "").strip().lower() not in FALSY


def _max_queue_length(request: Request) -> int | None:
    """`?fal_max_queue_length=N` (a non-negative integer), else None."""
    raw = request.query_params.get("fal_max_queue_length", "")
    return int(raw) if raw.isdigit() else None


async def enqueue(state: SimState, request: Request) -> RequestRecord | Response:
    """Accept a request to the endpoint into the queue (submit and sync run alike), or the error
    response: unknown app 404, invalid JSON 422, a full queue under `?fal_max_queue_length` 429."""
    if request.path_params["app"] != ENDPOINT_ID:
        return JSONResponse({"detail": f"Application '{request.path_params['app']}' not found"}, 404)
    try:
        payload = json.loads(await request.body() or b"null")
    except ValueError:
        return JSONResponse({"detail": [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]}, 422)
    queue, key = state.queue, request.state.key_id
    limit = _max_queue_length(request)
    if limit is not None and not queue.has_free_slot(key) and queue.waiting_count() >= limit:
        state.counters.add("queue_full_rejections")
        return too_many_requests(state.faults.config.retry_after_s)
    return queue.submit(
        key,
        payload,
        _start_timeout(request),
        store_io=_store_io(request),
        tags=parse_tags(request.headers.get("x-fal-tags")),
    )


def queue_routes(state: SimState) -> list[Route]:
    """Routes for the queue; submit's catch-all path must come last in the app."""
    queue = state.queue

    def lookup(request: Request):
        if request.path_params["app"] not in KNOWN_APPS:
            return None
        return queue.get(request.path_params["request_id"])

    async def status(request: Request) -> Response:
        rec = lookup(request)
        if rec is None:
            return not_found()
        with_logs = request.query_params.get("logs", "").lower() in TRUTHY
        body, code = status_body(rec, base_url(request), queue.queue_position(rec), with_logs=with_logs)
        return JSONResponse(body, code, headers={"x-fal-request-id": rec.request_id})

    async def result(request: Request) -> Response:
        rec = lookup(request)
        return not_found() if rec is None else result_response(rec, base_url(request))

    async def cancel(request: Request) -> Response:
        rec = lookup(request)
        if rec is None:
            return JSONResponse({"status": "NOT_FOUND"}, 404)
        reply = queue.cancel(rec)
        return JSONResponse({"status": reply}, 202 if reply == "CANCELLATION_REQUESTED" else 400)

    async def submit(request: Request) -> Response:
        rec = await enqueue(state, request)
        if isinstance(rec, Response):
            return rec
        if webhook := request.query_params.get("fal_webhook"):
            state.webhooks.register(rec.request_id, webhook, base_url(request))
        body = submit_body(rec, base_url(request), queue.queue_position(rec))
        return JSONResponse(body, 200, headers={"x-fal-request-id": rec.request_id})

    prefix = "/{app:path}/requests/{request_id}"
    return [
        Route(f"{prefix}/status", guarded(state, "status", "key", status), methods=["GET"]),
        Route(f"{prefix}/cancel", guarded(state, "cancel", "key", cancel), methods=["PUT"]),
        Route(prefix, guarded(state, "result", "key", result), methods=["GET"]),
        Route(f"{prefix}/response", guarded(state, "result", "key", result), methods=["GET"]),
        Route("/{app:path}", guarded(state, "submit", "key", submit), methods=["POST"]),
    ]


def unknown_route(state: SimState) -> Route:
    """Any method on any path no earlier route serves: 404 (instead of Starlette's 405 for a known
    path with another method). Must be the app's very last route."""

    async def unknown(request: Request) -> Response:
        state.counters.call("unknown")
        return not_found("Route")

    return Route("/{path:path}", unknown, methods=ANY_METHOD)
