"""SIGKILL the pipeline at random moments 20 times, re-run it each time, audit the simulator's ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.kill_resume import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_twenty_random_kills_never_bill_a_job_twice_and_lose_no_output(tmp_path: Path) -> None:
    """After 20 kills and a final run (history lagging 1 s): each job billed once, every output verified."""
    lines: list[str] = []
    report = run(kills=20, jobs=16, seed=11, max_delay_s=14.0, root=tmp_path, log=lines.append, history_lag_s=1.0)
    assert len(report.submits_at_kill) == 20
    assert report.submits_at_kill[-1] > 0, "some kills must land after submissions started"
    assert report.final_exit == 0, "\n".join(lines[-5:])
    assert report.billed_exactly_once, report.billed_per_job
    assert report.outputs_verified == report.jobs
