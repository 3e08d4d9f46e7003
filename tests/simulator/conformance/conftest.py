"""The `driver` fixture: every conformance test runs once with the real Python fal_client and once with
the real @fal-ai/client. Without node the JS runs skip; in CI (CI=true) a missing npm package fails them,
so a broken `npm ci` cannot pass as a skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fal_client
import pytest

from klingflow.simulator import Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conformance.drivers import JS_DIR, Driver, JsDriver, PythonDriver, js_missing_reason

BIG_BYTES = 101 * 1024 * 1024  # above both clients' multipart thresholds (JS 90 MiB, Python 100 MiB), < 200 MB


def _require_js() -> None:
    reason = js_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and shutil.which("node") and shutil.which("npm"):
        pytest.fail(f"{reason} (CI: .ci/run runs `npm ci` in {JS_DIR})")
    pytest.skip(reason)


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
