"""Simulator: runs the app with uvicorn in a background thread on a pre-bound loopback socket."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from klingflow.simulator.app import build_app
from klingflow.simulator.config import FaultConfig, SimulatorConfig
from klingflow.simulator.models import LedgerEntry
from klingflow.simulator.responses import QuietDrops
from klingflow.simulator.state import SimState

STARTUP_TIMEOUT_S = 10.0


class Simulator:
    """A local fal (queue + storage + the Kling O3 edit endpoint) that the real fal_client talks to."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._state: SimState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port it serves on (the configured one, or the one the OS gave for port 0)."""
        if self._port is None:
            raise RuntimeError("simulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (pass it to klingflow.fal.urls.fal_client_pointed_at)."""
        if self._port is None:
            raise RuntimeError("simulator is not running")
        host = self.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a name, not a bind
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    def start(self) -> Simulator:
        """Start serving; returns once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._state = SimState.create(self.config)
        sock = _bind(self.config.host, self.config.port)
        self._port = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").addFilter(QuietDrops())
        uv_config = uvicorn.Config(
            build_app(self._state),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="klingflow.simulator"
        )
        self._thread.start()
        self._wait_started()
        return self

    def stop(self) -> None:
        """Stop serving (queued and running requests stay persisted for the next start)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def ledger(self) -> list[LedgerEntry]:
        """Billed requests (same data as GET /_simulator/ledger)."""
        return self._require_state().ledger.entries()

    def counters(self) -> dict[str, Any]:
        """Call/transfer/concurrency counters (same data as GET /_simulator/counters)."""
        return self._require_state().counters.snapshot()

    def set_faults(self, faults: FaultConfig) -> None:
        """Change fault injection at runtime (same as PUT /_simulator/faults)."""
        self._require_state().faults.set_config(faults)

    def _require_state(self) -> SimState:
        if self._state is None:
            raise RuntimeError("simulator was never started")
        return self._state

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self._server is not None and self._thread is not None
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator failed to start")
            time.sleep(0.005)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
