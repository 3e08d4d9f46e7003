"""HTTP-level fault responses: the shapes fal_client's retry logic reacts to, and a dropped connection."""

from __future__ import annotations

import logging

from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

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


def too_many_requests(retry_after_s: int) -> Response:
    """429 with Retry-After (fal_client retries 429)."""
    return JSONResponse({"detail": "Rate limit exceeded"}, 429, headers={"Retry-After": str(retry_after_s)})


def ingress_error(code: int) -> Response:
    """nginx-style 502/503 with no x-fal-request-id: fal_client treats it as an ingress error and retries."""
    return HTMLResponse(_NGINX.format(code=code, reason=_REASONS.get(code, "Error")), code)


def internal_error() -> Response:
    """Plain 500 (fal_client does not retry it)."""
    return JSONResponse({"detail": "Internal Server Error"}, 500)


def unauthorized() -> Response:
    """What fal answers without credentials."""
    return JSONResponse({"detail": "No user found for Key ID and Secret"}, 401)


def not_found(what: str = "Request") -> Response:
    """Unknown or expired id."""
    return JSONResponse({"detail": f"{what} not found"}, 404)
