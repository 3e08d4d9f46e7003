"""Two laptops on one fal key (issue 24, rows 6 and 7): two `klingflow run` processes of one manifest with their
own state dirs, report dirs and request ledgers (SQLite, nothing shared), one standalone simulator. The
simulator's bill is the truth: a job billed twice is a duplicate, and `klingflow reconcile` (the CLI, on each
laptop's report dir) must name every one. Driven by bench/two_machines.py, which measures the same over 10 trials.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.two_machines import BOUND, TIME_SCALE, WARNING, manifest, run_alone, two_runs
from klingflow.simulator import Simulator, SimulatorConfig

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

JOBS = 16


@pytest.fixture
def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture
def sim(tmp_path: Path):
    config = SimulatorConfig(
        state_dir=tmp_path / "sim", time_scale=TIME_SCALE, concurrency_per_key=2, log_interval_s=0.5, history_lag_s=1.0
    )
    with Simulator(config) as running:
        yield running


def _homes(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "laptop-a", tmp_path / "laptop-b"


def test_a_second_laptop_started_while_the_first_submits_pays_for_nothing_the_first_sent(
    tmp_path: Path, sim: Simulator, api_url: str
) -> None:
    """Row 7: B starts once A's fourth request is at fal. B sees A's requests before spending, warns that no shared
    ledger is configured, adopts what A sent and takes the manifest from its end: every job is billed once."""
    path = manifest(tmp_path, JOBS, "row7")
    result = two_runs(sim, _homes(tmp_path), path, api_url, after_submits=4)

    assert result.exits == (0, 0), result.logs
    assert result.duplicates == [], result.windows_s
    assert len(sim.ledger()) == JOBS
    assert result.warned_before_first_submit[1], result.logs[1]  # B, before spending anything
    assert "KLINGFLOW_DATABASE_URL=postgresql+psycopg://" in result.logs[1] and "--state-dir" in result.logs[1]
    assert result.adopted[1] >= 4  # B paid for none of what A had sent
    assert result.reconcile_exits == (0, 0)


def test_two_laptops_started_together_warn_before_spending_and_reconcile_names_every_job_paid_twice(
    tmp_path: Path, sim: Simulator, api_url: str
) -> None:
    """Row 6: both laptops have used the key before (one small run each), then start one manifest together. Each
    sees requests its ledger does not know before its first submit: it warns, before any money is spent, that no
    shared ledger is configured and how to set one, and waits a random jitter. What is billed twice stays within
    the measured bound, and reconcile on each laptop's report dir names every such job and exits 1."""
    homes = _homes(tmp_path)
    for home, tag in zip(homes, ("earlier-a", "earlier-b"), strict=True):
        assert run_alone(sim, home, manifest(tmp_path, 1, tag), api_url, "earlier") == 0

    result = two_runs(sim, homes, manifest(tmp_path, JOBS, "row6"), api_url, offset_s=0.0)

    assert result.exits == (0, 0), result.logs
    assert result.warned_before_first_submit == (True, True), result.logs
    assert all(WARNING in log and "KLINGFLOW_DATABASE_URL=postgresql+psycopg://" in log for log in result.logs)
    assert len(result.duplicates) <= BOUND, result.windows_s
    assert not result.missed, (result.duplicates, result.named)
    expected = 1 if result.duplicates else 0
    assert result.reconcile_exits == (expected, expected)
