"""The `driver` fixture: every conformance test runs once with the real Python fal_client and once with
the real @fal-ai/client. The package is installed from the lock file (`npm ci`) the first time it is
needed, so the README's test command alone runs both halves. Without node and npm the JS runs skip; in CI
(CI=true) a package that cannot be installed fails them, so a broken install cannot pass as a skip."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import fal_client
import pytest

from klingflow.simulator import Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conformance.drivers import JS_DIR, Driver, JsDriver, PythonDriver, js_missing_reason

BIG_BYTES = 101 * 1024 * 1024  # above both clients' multipart thresholds (JS 90 MiB, Python 100 MiB), < 200 MB


def _require_js() -> None:
    reason = js_missing_reason()
    if reason is not None and shutil.which("node") and shutil.which("npm"):
        reason = _npm_ci() or js_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and shutil.which("node") and shutil.which("npm"):
        pytest.fail(f"{reason} (`npm ci` in {JS_DIR})")
    pytest.skip(reason)


@functools.cache
def _npm_ci() -> str | None:
    """Install the pinned @fal-ai/client from the lock file (once per session); why it failed, or None."""
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return None if done.returncode == 0 else f"npm ci failed: {done.stderr.strip()[-500:]}"


@pytest.fixture(params=["python", "js"])
def make_driver(request: pytest.FixtureRequest):
    """A factory: the named client pointed at a started simulator."""
    if request.param == "js":
        _require_js()

    def factory(sim: Simulator) -> Driver:
        return (PythonDriver if request.param == "python" else JsDriver)(sim.url, TEST_FAL_KEY)

    return factory


def clip_url(media) -> str:
    """A small clip on the newest simulator's storage (uploaded with fal_client; uploads have their own
    tests, for both clients)."""
    return fal_client.SyncClient(key=TEST_FAL_KEY).upload_file(media.silent)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 101 MiB file: legal as an input (< 200 MB) and uploaded in parts by both clients."""
    path = tmp_path_factory.mktemp("big") / "big.mp4"
    chunk = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(BIG_BYTES // len(chunk)):
            f.write(bytes([i % 256]) + chunk[1:])
    return path
