"""A loopback HTTP server that sends one file's bytes slowly (a stuck CDN, a slow NAS gateway)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def trickling(path: Path, *, chunk: int = 1024, every_s: float = 0.2) -> Iterator[str]:
    """Serve `path` at `chunk` bytes every `every_s` seconds; the URL to fetch it from."""
    data = path.read_bytes()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for start in range(0, len(data), chunk):
                if stop.is_set():
                    return
                self.wfile.write(data[start : start + chunk])
                self.wfile.flush()
                time.sleep(every_s)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
