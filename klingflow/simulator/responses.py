"""HTTP-level error and fault responses: the shapes fal_client's retry logic reacts to, a dropped
connection, and the platform API's (`/v1/...`) `{"error": {"type", "message"}}` shape."""

from __future__ import annotations

import logging
from typing import Literal

from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

ErrorStyle = Literal["queue", "platform"]  # `{"detail": ...}` or the platform API's `{"error": {...}}`

_NGINX = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}


class DropConnection(Exception):
    """Raised mid-response so uvicorn closes the socket: the client sees an incomplete response."""


class DropResponse(Response):
    """Sends headers and part of a body, then aborts the connection (a lost response)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"request_id": "', "more_body": True})
        raise DropConnection


class QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every injected connection drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def platform_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error of fal's platform API; `kind` is one of its error types (validation_error, not_found, ...)."""
    return JSONResponse({"error": {"type": kind, "message": message}}, status, headers=headers)


def too_many_requests(retry_after_s: int, style: ErrorStyle = "queue") -> Response:
    """429 with Retry-After (fal_client retries 429)."""
    headers = {"Retry-After": str(retry_after_s)}
    if style == "platform":
        return platform_error(429, "rate_limited", "Rate limit exceeded", headers)
    return JSONResponse({"detail": "Rate limit exceeded"}, 429, headers=headers)


def ingress_error(code: int) -> Response:
    """nginx-style 502/503 with no x-fal-request-id: fal_client treats it as an ingress error and retries."""
    return HTMLResponse(_NGINX.format(code=code, reason=_REASONS.get(code, "Error")), code)


def internal_error(style: ErrorStyle = "queue") -> Response:
    """Plain 500 (fal_client does not retry it)."""
    if style == "platform":
        return platform_error(500, "server_error", "An unexpected error occurred")
    return JSONResponse({"detail": "Internal Server Error"}, 500)


def unauthorized(style: ErrorStyle = "queue") -> Response:
    """What fal answers without (valid) credentials."""
    if style == "platform":
        return platform_error(401, "authorization_error", "Authentication required")
    return JSONResponse({"detail": "No user found for Key ID and Secret"}, 401)


def forbidden(style: ErrorStyle = "queue") -> Response:
    """A valid key that may not call the route (a normal key on an admin-only platform route)."""
    if style == "platform":
        return platform_error(403, "authorization_error", "This endpoint requires an admin API key")
    return JSONResponse({"detail": "Forbidden"}, 403)


def not_found(what: str = "Request", style: ErrorStyle = "queue") -> Response:
    """Unknown or expired id, or an unknown route."""
    if style == "platform":
        return platform_error(404, "not_found", f"{what} not found")
    return JSONResponse({"detail": f"{what} not found"}, 404)
