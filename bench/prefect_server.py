"""One Prefect server for a benchmark's many `klingflow run`s: runs start in seconds instead of each
booting a temporary server (10-20 s or more here), so what a bench measures or kills is the pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server with its own home for the duration; its API URL (for PREFECT_API_URL)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    # no telemetry: no host but the package registries is reachable here
    with temporary_settings({PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        server = SubprocessASGIServer()
        server.start(timeout=180)
        try:
            yield server.api_url
        finally:
            server.stop()
