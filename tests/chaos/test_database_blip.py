"""A PostgreSQL restart in the middle of two runs costs nothing: two `klingflow run`s of one manifest share a
PostgreSQL request ledger (as two machines do); once their first requests reach the simulator, the database
restarts (`pg_ctl restart -m fast`: every connection dropped, the server down for a moment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from klingflow.ledger.schema import DATABASE_URL_ENV
from tests.chaos.runs import command, environment, manifest, outcome, wait_for_submits

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

JOBS = 8


def test_a_postgresql_restart_mid_run_fails_no_job_and_bills_none_twice(tmp_path: Path, make_simulator, pg_cluster):
    """Both runs succeed in every job; each job is billed at most once; the reports carry exactly the bills."""
    from prefect.settings import PREFECT_API_URL

    sim = make_simulator(time_scale=1.0, concurrency_per_key=2)  # 3 s per job: the runs outlive the restart
    ledger_url = pg_cluster.url(pg_cluster.create_database())
    env = environment(str(PREFECT_API_URL.value()), **{DATABASE_URL_ENV: ledger_url})
    edits = manifest(tmp_path, JOBS)
    procs = [
        subprocess.Popen(command(edits, tmp_path, name), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name in ("a", "b")
    ]
    try:
        wait_for_submits(lambda: sim.counters()["submits"], 1, procs, timeout_s=240)
        pg_cluster.restart()
        submits_at_restart = sim.counters()["submits"]
        logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert submits_at_restart < JOBS, "the restart came after every job was submitted"
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    result = outcome(sim.ledger(), [tmp_path / "reports-a", tmp_path / "reports-b"])
    assert len(result.reports) == 2 * JOBS
    assert (result.reports["status"] == "succeeded").all(), result.reports[["job_id", "status", "error"]]
    assert len(result.bills_per_job) == JOBS and set(result.bills_per_job.values()) == {1}, result.bills_per_job
    assert round(result.reports["cost_usd"].sum(), 4) == result.billed_usd
