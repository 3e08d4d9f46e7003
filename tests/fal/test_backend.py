"""Backend choice and keys: auto is said loudly, the key is resolved once and never leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import fal_client.client as fc
import pytest

from klingflow.errors import BackendError
from klingflow.fal.backend import SIMULATOR_KEY, choose_backend, key_for, resolve_fal_key
from klingflow.fal.urls import FAL_DEFAULTS, current_urls
from klingflow.models import Backend, EditParams
from klingflow.pipeline.backend import open_backend

LOG = logging.getLogger("backend-test")


def test_auto_without_a_key_uses_the_simulator_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """No key configured: auto means the simulator, with a warning saying so."""
    with caplog.at_level(logging.WARNING):
        assert choose_backend(Backend.auto, None) is Backend.simulator
    assert "LOCAL SIMULATOR" in caplog.text


def test_auto_with_a_key_uses_fal_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """A key configured: auto means the real fal.ai, with a warning that it costs money."""
    with caplog.at_level(logging.WARNING):
        assert choose_backend(Backend.auto, "k") is Backend.fal
    assert "REAL fal.ai" in caplog.text
    assert choose_backend(Backend.simulator, "k") is Backend.simulator


def test_the_key_comes_from_the_environment_without_starting_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a flow run and without PREFECT_API_URL no Secret block is read (no server is started)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert resolve_fal_key() == "sim-test-key:not-a-secret"
    monkeypatch.delenv("FAL_KEY")
    monkeypatch.setenv("FAL_KEY_ID", "id")
    monkeypatch.setenv("FAL_KEY_SECRET", "secret")
    assert resolve_fal_key() == "id:secret"
    monkeypatch.delenv("FAL_KEY_ID")
    assert resolve_fal_key() is None


def test_fal_without_a_key_cannot_start() -> None:
    """backend=fal and no key: a clear error before anything happens; the simulator gets a local key."""
    with pytest.raises(BackendError, match="needs a key"):
        key_for(Backend.fal, None)
    assert key_for(Backend.simulator, "sim-test-key:not-a-secret") == SIMULATOR_KEY


async def test_fal_queue_holds_the_key_without_showing_it(tmp_path: Path) -> None:
    """The fal queue uses the configured key; its repr and labels never show it; URLs come back."""
    params = EditParams(manifest="m.csv", backend="fal", state_dir=str(tmp_path))
    before = current_urls()
    async with open_backend(params, Backend.fal, "sim-test-key:not-a-secret", LOG) as fal:
        assert fal.key.startswith("sim-test-key")
        assert fal.key not in repr(fal)
        assert fal.key not in fal.label + fal.namespace
        assert fal.target.queue_url == "https://queue.fal.run"
        assert fc.QUEUE_URL_FORMAT == FAL_DEFAULTS["QUEUE_URL_FORMAT"]
    assert current_urls() == before


async def test_running_simulator_is_shared_and_gets_a_local_key(simulator, tmp_path: Path) -> None:
    """KLINGFLOW_SIMULATOR_URL: the pipeline uses that simulator, sending it a local key, not yours."""
    params = EditParams(manifest="m.csv", backend="simulator", state_dir=str(tmp_path))
    async with open_backend(params, Backend.simulator, "sim-test-key:not-a-secret", LOG) as fal:
        assert fal.target.queue_url == simulator.url
        assert fal.key == SIMULATOR_KEY
        assert fc.QUEUE_URL_FORMAT == simulator.url + "/"
    assert fc.QUEUE_URL_FORMAT == FAL_DEFAULTS["QUEUE_URL_FORMAT"]
