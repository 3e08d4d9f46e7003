"""Backend choice and fal_client redirection: auto is said loudly, keys never leak."""

from __future__ import annotations

import logging
from pathlib import Path

import fal_client.client as fc
import pytest

from klingflow.fal.backend import SIMULATOR_KEY, choose_backend, open_backend
from klingflow.fal.urls import FAL_DEFAULTS, point_fal_client_at, point_fal_client_at_fal
from klingflow.models import Backend, EditParams


def test_auto_without_a_key_uses_the_simulator_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No key configured: auto means the simulator, with a warning saying so."""
    monkeypatch.delenv("FAL_KEY")
    with caplog.at_level(logging.WARNING):
        assert choose_backend(Backend.auto) is Backend.simulator
    assert "LOCAL SIMULATOR" in caplog.text


def test_auto_with_a_key_uses_fal_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """A key configured: auto means the real fal.ai, with a warning that it costs money."""
    with caplog.at_level(logging.WARNING):
        assert choose_backend(Backend.auto) is Backend.fal
    assert "REAL fal.ai" in caplog.text
    assert choose_backend(Backend.simulator) is Backend.simulator


def test_redirection_covers_queue_rest_and_cdn_and_is_reversible() -> None:
    """All four URL constants follow the simulator, and fal's own come back."""
    point_fal_client_at("http://127.0.0.1:9")
    assert (fc.QUEUE_URL_FORMAT, fc.REST_URL, fc.CDN_URL) == (
        "http://127.0.0.1:9/",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
    )
    point_fal_client_at_fal()
    assert fc.QUEUE_URL_FORMAT == FAL_DEFAULTS["QUEUE_URL_FORMAT"] == "https://queue.fal.run/"


def test_fal_session_holds_the_key_without_showing_it(tmp_path: Path) -> None:
    """The fal session uses the configured key; its repr and labels never show it."""
    params = EditParams(manifest="m.csv", backend="fal", state_dir=str(tmp_path))
    with open_backend(params) as session:
        assert session.key.startswith("sim-test-key")
        assert session.key not in repr(session)
        assert session.key not in session.label + session.namespace
        assert session.base_url == "https://queue.fal.run"


def test_fal_without_a_key_cannot_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """backend=fal and no key: a clear error before anything happens."""
    monkeypatch.delenv("FAL_KEY")
    from klingflow.errors import BackendError

    with (
        pytest.raises(BackendError, match="needs a key"),
        open_backend(EditParams(manifest="m.csv", backend="fal", state_dir=str(tmp_path))),
    ):
        pass


def test_running_simulator_is_shared_and_gets_a_local_key(simulator, tmp_path: Path) -> None:
    """KLINGFLOW_SIMULATOR_URL: the pipeline uses that simulator, sending it a local key, not yours."""
    with open_backend(EditParams(manifest="m.csv", backend="simulator", state_dir=str(tmp_path))) as session:
        assert session.base_url == simulator.url
        assert session.key == SIMULATOR_KEY
        assert fc.QUEUE_URL_FORMAT == simulator.url + "/"
