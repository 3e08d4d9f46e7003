"""Simulator fixtures: a factory that starts simulators (pointing fal_client at the newest one) and
a session-wide corpus of tiny synthetic clips."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import fal_client
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.fal.urls import fal_client_pointed_at
from klingflow.media.synth import make_clip, make_image
from klingflow.simulator import Simulator, SimulatorConfig
from tests.conftest import TEST_FAL_KEY

SimFactory = Callable[..., Simulator]


class _Pointer:
    """fal_client pointed at the newest simulator (the previous pointing is released first)."""

    def __init__(self) -> None:
        self._held = ExitStack()

    def point(self, url: str) -> None:
        self.release()  # fal_client's URLs are process-wide: one simulator at a time
        self._held.enter_context(fal_client_pointed_at(url))

    def release(self) -> None:
        self._held.close()
        self._held = ExitStack()


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[SimFactory]:
    """Start simulators with fast test defaults; every one is stopped at teardown."""
    started: list[Simulator] = []
    pointer = _Pointer()

    def factory(**overrides: Any) -> Simulator:
        settings: dict[str, Any] = {
            "state_dir": tmp_path / "sim-state",
            "time_scale": 0.02,
            "log_interval_s": 0.05,
            **overrides,
        }
        sim = Simulator(SimulatorConfig(**settings)).start()
        started.append(sim)
        pointer.point(sim.url)
        return sim

    try:
        yield factory
    finally:
        for sim in started:
            sim.stop()
        pointer.release()


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    """One simulator with default test settings."""
    return make_sim()


@pytest.fixture
def client() -> fal_client.SyncClient:
    """The real sync fal_client."""
    return fal_client.SyncClient(key=TEST_FAL_KEY)


@pytest.fixture
def aclient() -> fal_client.AsyncClient:
    """The real async fal_client."""
    return fal_client.AsyncClient(key=TEST_FAL_KEY)


class Media:
    """Paths of the generated test corpus."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clip = make_clip(root / "clip.mp4", seconds=3, width=1280, height=720)
        self.silent = make_clip(root / "silent.mov", seconds=3, width=720, height=720, audio=False)
        self.image = make_image(root / "ref.png")

    def extra(self, name: str, **kwargs: Any) -> Path:
        """A further clip, generated on first use and cached for the session."""
        path = self.root / name
        return path if path.exists() else make_clip(path, **kwargs)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    """Tiny clips shared by all simulator tests (nothing binary is committed)."""
    return Media(tmp_path_factory.mktemp("sim-media"))


def edit_args(video_url: str, prompt: str = "Turn the scene into a snowy evening", **extra: Any) -> dict[str, Any]:
    """A valid edit request body."""
    return {"prompt": prompt, "video_url": video_url, **extra}


def submit(client: fal_client.SyncClient, args: dict[str, Any], **kwargs: Any) -> fal_client.SyncRequestHandle:
    """Submit to the edit endpoint."""
    return client.submit(ENDPOINT_ID, args, **kwargs)
