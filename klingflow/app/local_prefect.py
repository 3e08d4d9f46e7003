"""The local Prefect server of `klingflow run` and `demo`: started once, then shared by every run.

Prefect's default for a process without PREFECT_API_URL is a temporary server per process over one
SQLite file in ~/.prefect. Measured here, that costs 10-20 s of start-up per run, two runs started
together time out (`Timed out while attempting to connect to ephemeral Prefect API server`), and a
temporary server runs no services, so the concurrency slots of a killed run stay taken forever.

So when PREFECT_API_URL is not set, klingflow runs one `prefect server start` of its own, in the
background, with its services (the lease repossessor frees a dead run's slots within a lease) and its
own home under `$KLINGFLOW_HOME/prefect-server` (database, log). The first run starts it (holding a file
lock, so concurrent first runs start one server, not four); later runs find it through `server.json`
and a health check, and start in seconds. It listens on loopback only and keeps running after the run
(`klingflow server stop` stops it; `klingflow server status` says where its UI is). With PREFECT_API_URL
set (a team's server, Prefect Cloud) that server is used and nothing is started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from klingflow.cachedir import private_dir
from klingflow.errors import BackendError
from klingflow.models import default_state_dir

START_TIMEOUT_S = 180.0  # a first start runs the database migrations: 20 s and more on a busy 2-core machine
LEASE_REAP_EVERY_S = 5  # the repossessor's loop: a dead run's slots are free within a lease + this
HEALTH_TIMEOUT_S = 3.0


class LocalServerError(BackendError):
    """The local Prefect server could not be started or reached."""


@dataclass(frozen=True)
class LocalServer:
    """Where klingflow's local Prefect server keeps its files, and how to reach it."""

    root: Path

    @classmethod
    def default(cls) -> LocalServer:
        return cls(Path(default_state_dir()).expanduser() / "prefect-server")

    @property
    def info_path(self) -> Path:
        return self.root / "server.json"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def info(self) -> dict | None:
        """{url, pid} of the server last started here (it may have died since)."""
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None

    def running_url(self) -> str | None:
        """The API URL of the server, if it answers."""
        info = self.info()
        if info and _healthy(info["url"]):
            return info["url"]
        return None

    def ensure(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The running server's API URL, starting it first if it is not running."""
        if url := self.running_url():
            return url
        private_dir(self.root)
        with _locked(self.root / "server.lock"):  # one starter; the others wait here, then find it running
            if url := self.running_url():
                return url
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.root / "home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(LEASE_REAP_EVERY_S),
            # the UI asks `/ui-settings` where its API is; without these it is told 127.0.0.1:4200 (Prefect's
            # default port, not this server's) and shows "Can't connect to Server API"
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": url,
        }
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_SERVER_UI_API_URL", None)  # an alias of PREFECT_UI_API_URL that would win over it
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(
                    f"the local Prefect server exited at start (code {proc.returncode}); see {self.log_path}"
                )
            if _healthy(url):
                self.info_path.write_text(json.dumps({"url": url, "pid": proc.pid, "started_at": time.time()}))
                return url
            time.sleep(0.25)
        _stop_group(proc.pid)
        raise LocalServerError(
            f"the local Prefect server did not start within {timeout_s:.0f} s; see {self.log_path}, or start one "
            "(`prefect server start`) and set PREFECT_API_URL"
        )

    def stop(self) -> bool:
        """Stop the server started here; whether one was running."""
        info = self.info()
        if not info:
            return False
        running = _healthy(info["url"])
        if running:
            _stop_group(int(info["pid"]))
        with contextlib.suppress(OSError):
            self.info_path.unlink()
        return running


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """For the block, the Prefect API the run uses: PREFECT_API_URL if set, else the local server (started
    if needed). Yields the local server's URL, or None when the user's API is used; restored after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    url = LocalServer.default().ensure()
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stop_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not gone after `grace_s`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
            os.killpg(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
