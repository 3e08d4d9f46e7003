"""A loopback webhook receiver: a real HTTP server in a thread that records every POST, and can answer
the first N deliveries with 500 so fal's retries show."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from pydantic import BaseModel


class Delivery(BaseModel):
    """One webhook POST as received."""

    headers: dict[str, str]
    body: Any
    answered: int


class Receiver:
    """Collects webhook deliveries on 127.0.0.1:<port>/hook."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self._fail_left = fail_first
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def accepted(self) -> list[Delivery]:
        """Deliveries answered 200."""
        with self._lock:
            return [d for d in self.deliveries if d.answered == 200]

    def _record(self, headers: dict[str, str], raw: bytes) -> int:
        with self._lock:
            code = 500 if self._fail_left > 0 else 200
            self._fail_left -= 1
            self.deliveries.append(Delivery(headers=headers, body=json.loads(raw or b"null"), answered=code))
            return code

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                code = receiver._record({k.lower(): v for k, v in self.headers.items()}, raw)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
