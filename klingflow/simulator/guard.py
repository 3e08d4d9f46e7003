"""Wraps every public route: count the call, maybe inject an HTTP fault, check credentials.

Order mirrors fal: ingress faults happen before auth; `drop_after` lets the handler act first.
Platform routes (`style="platform"`) answer JSON faults and 401s in the platform error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from klingflow.simulator.auth import key_from_header, key_id
from klingflow.simulator.responses import (
    DropResponse,
    ErrorStyle,
    forbidden,
    ingress_error,
    internal_error,
    too_many_requests,
    unauthorized,
)
from klingflow.simulator.state import SimState

Handler = Callable[[Request], Awaitable[Response]]
AuthMode = Literal["key", "admin", "cdn", "none"]  # admin: a key listed in SimulatorConfig.admin_key_ids


def guarded(state: SimState, kind: str, auth: AuthMode, handler: Handler, *, style: ErrorStyle = "queue") -> Handler:
    """The route endpoint for `handler`, with counting, faults and auth applied."""

    async def endpoint(request: Request) -> Response:
        state.counters.call(kind, request.path_params.get("request_id"))
        fault = state.faults.http_fault(kind)
        if fault is not None and fault != "drop_after":
            state.counters.fault(kind, fault)
            return _fault_response(state, fault, style)
        owner = _authenticate(state, auth, request)
        if owner is None:
            return unauthorized(style)
        if auth == "admin" and owner not in state.config.admin_key_ids:
            return forbidden(style)
        request.state.key_id = owner
        response = await handler(request)
        if fault == "drop_after":
            state.counters.fault(kind, fault)
            return DropResponse()
        return response

    return endpoint


def _authenticate(state: SimState, auth: AuthMode, request: Request) -> str | None:
    """The caller's key id ('' for public routes), or None when credentials are missing/invalid."""
    if auth == "none":
        return ""
    header = request.headers.get("authorization")
    if auth == "cdn":
        return state.signer.token_owner(header)
    key = key_from_header(header)
    return key_id(key) if key else None


def _fault_response(state: SimState, fault: str, style: ErrorStyle) -> Response:
    if fault == "http_429":
        return too_many_requests(state.faults.config.retry_after_s, style)
    if fault == "ingress_5xx":
        return ingress_error(state.faults.ingress_code())  # nginx HTML on every route, as ingress is shared
    if fault == "http_500":
        return internal_error(style)
    return DropResponse()
