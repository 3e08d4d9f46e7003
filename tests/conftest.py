"""Shared fixtures: an isolated environment, a session-wide Prefect test server, the simulator.

The simulator is a real HTTP server in a thread; the real fal_client talks to it (no mocks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_FAL_KEY = "sim-test-key:not-a-secret"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own KLINGFLOW_HOME and a fake key; nothing touches ~/.klingflow or fal.ai."""
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "klingflow-home"))
    monkeypatch.setenv("FAL_KEY", TEST_FAL_KEY)
    monkeypatch.delenv("KLINGFLOW_SIMULATOR_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One ephemeral Prefect server for the whole session (start-up costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage")
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def make_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Start a simulator (fast test settings, overridable) that the pipeline uses via KLINGFLOW_SIMULATOR_URL."""
    from klingflow.simulator import Simulator, SimulatorConfig

    started: list[Simulator] = []

    def start(**overrides: object) -> Simulator:
        settings: dict[str, object] = {
            "state_dir": tmp_path / f"sim-state-{len(started)}",
            "time_scale": 0.05,
            "log_interval_s": 0.05,
            "concurrency_per_key": 2,
            **overrides,
        }
        sim = Simulator(SimulatorConfig(**settings)).start()
        started.append(sim)
        monkeypatch.setenv("KLINGFLOW_SIMULATOR_URL", sim.url)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def simulator(make_simulator):
    """A fast simulator that the pipeline uses through KLINGFLOW_SIMULATOR_URL (shared queue and ledger)."""
    return make_simulator(state_dir=Path(os.environ["KLINGFLOW_HOME"]).parent / "sim-state")


def fast_params(tmp_path: Path, manifest: Path, **overrides: object):
    """Flow parameters for tests: simulator backend, quick polling, private dirs under tmp_path."""
    from klingflow.models import EditParams

    values: dict[str, object] = {
        "manifest": str(manifest),
        "backend": "simulator",
        "output_dir": str(tmp_path / "outputs"),
        "report_dir": str(tmp_path / "reports"),
        "state_dir": str(tmp_path / "state"),
        "poll_interval_s": 0.05,
        "poll_max_interval_s": 0.2,
        "job_timeout_s": 60,
        "concurrency_limit": f"klingflow-test-{tmp_path.name}",
    }
    values.update(overrides)
    return EditParams(**values)


async def run_flow(params):
    """Run the real `edit_videos` flow; return its final state's name and its RunSummary."""
    from flows.edit_videos import RunSummary, edit_videos

    state = await edit_videos(params, return_state=True)
    summary = await state.aresult(raise_on_failure=False)
    assert isinstance(summary, RunSummary), summary
    return state.type.value, summary


SESSION_KEY = "stage-test-key"


@pytest.fixture
async def fal(simulator):
    """The run's FalQueue on the `simulator` fixture, as the flow opens one (real fal_client for uploads)."""
    from klingflow.fal.queue import Backoff, FalQueue, Target

    async with FalQueue(Target.simulator(simulator.url), SESSION_KEY, backoff=Backoff(base_s=0.01)) as queue:
        yield queue


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A throwaway PostgreSQL cluster for the session (initdb/pg_ctl, loopback port), removed at the end.

    Outside CI, without the binaries, the PostgreSQL tests skip; in CI (CI=true) they fail instead.
    """
    from tests.pgcluster import find_bindir, start_cluster

    if find_bindir() is None and os.environ.get("CI") != "true":
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed; CI installs Debian's postgresql")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger database per test: SQLite in tmp_path, or a new database on the session's cluster."""
    from klingflow.ledger.schema import sqlite_url

    if request.param == "sqlite":
        return sqlite_url(tmp_path / "ledger")
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.url(cluster.create_database())
