"""Faults of klingflow's own infrastructure injected for real (bench/chaos.py): the local Prefect server killed
with -9 mid-run, SIGTERM and SIGINT to `klingflow run` mid-run. Each run ends with its documented exit code,
no traceback and its whole report; nothing is billed twice; one re-run finishes every job and brings the
reports to the simulator's ledger. (The bench also holds each run to 60 s after the fault or its last bill.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize(
    ("scenario", "jobs", "concurrency"), [("server-killed", 8, 3), ("sigterm", 6, 2), ("sigint", 6, 2)]
)
def test_a_fault_of_klingflows_own_infrastructure_costs_nothing(
    scenario: str, jobs: int, concurrency: int, tmp_path: Path
) -> None:
    """The run stops or finishes cleanly, reported; one re-run completes every job, each billed once."""
    outcome = run_scenario(scenario, tmp_path, jobs=jobs, concurrency=concurrency)
    assert not outcome.missed(timed=False), outcome.line() + "\n" + outcome.log_tail
    assert outcome.rerun_succeeded == jobs and max(outcome.bills.values()) == 1
    assert set(outcome.bills) == {f"Edit number {i} of @Video1" for i in range(jobs)}
