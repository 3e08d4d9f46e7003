"""SIGKILL the pipeline at random moments, re-run it each time, audit the simulator's ledger (the bench,
bench/kill_resume.py, runs the longer loop the README quotes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.kill_resume import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_random_kills_never_bill_a_job_twice_and_lose_no_output(tmp_path: Path, ledger_url: str) -> None:
    """After 10 kills and a final run (history lagging 1 s): each job billed once, every output verified,
    with the request ledger in SQLite (the state dir) or in PostgreSQL."""
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())  # the session's server: kills land in the pipeline, not in its start-up
    lines: list[str] = []
    report = run(
        kills=10,
        jobs=10,
        seed=11,
        max_delay_s=10.0,
        root=tmp_path,
        log=lines.append,
        history_lag_s=1.0,
        api_url=api_url,
        database_url=None if ledger_url.startswith("sqlite") else ledger_url,
    )
    assert len(report.submits_at_kill) == 10
    assert report.submits_at_kill[-1] > 0, "some kills must land after submissions started"
    assert report.final_exit == 0, "\n".join(lines[-5:])
    assert report.billed_exactly_once, report.billed_per_job
    assert report.outputs_verified == report.jobs
    assert report.ledger_entries == report.jobs
    on_sqlite = (tmp_path / "state" / "requests" / "ledger.sqlite").exists()
    assert on_sqlite == ledger_url.startswith("sqlite"), "the runs used the ledger the setting chose"
