"""A request ledger damaged between runs costs nothing: a run on the simulator; a page of its SQLite ledger that
holds entries garbled (as a bad sector or a torn copy leaves it); the next run stops in one clear line;
`klingflow ledger rebuild` keeps what can be read; the run after it succeeds in every job and pays for none
again (what the salvage lost is adopted from the simulator's request history, as from fal's)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from klingflow.ledger.schema import ledger_file
from klingflow.ledger.store import RequestLedger
from tests.chaos.runs import command, environment, manifest, outcome

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

JOBS = 6
PAGE = 4096


def _garble_page_of(path: Path, needle: bytes) -> None:
    """The page holding `needle` (an entry's bytes) overwritten with random bytes."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= PAGE, f"{needle!r} is not on an entry page of {path}"
    start = at // PAGE * PAGE
    data[start : start + PAGE] = random.Random(24).randbytes(PAGE)
    path.write_bytes(bytes(data))


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_garbled_ledger_stops_the_run_clearly_and_a_rebuild_pays_nothing_twice(
    tmp_path: Path, make_simulator
) -> None:
    """Run, garble, run (exit 2, one line: the file and `klingflow ledger rebuild`), rebuild, run: every job
    succeeded, each billed exactly once, the reports together carry exactly the simulator's bills."""
    from prefect.settings import PREFECT_API_URL

    sim = make_simulator(time_scale=0.2)
    env = environment(str(PREFECT_API_URL.value()))
    edits = manifest(tmp_path, JOBS)
    run = command(edits, tmp_path, "x")
    first = _run(run, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    path = ledger_file(tmp_path / "state-x")
    assert not path.with_name(path.name + "-wal").exists(), "the run's end checkpoints the ledger into its file"
    _garble_page_of(path, b'"job_id":"job2"')

    stopped = _run(run, env)
    assert stopped.returncode == 2, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    lines = [line for line in (stopped.stdout + stopped.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "klingflow ledger rebuild --state-dir" in lines[0], lines
    assert "Traceback" not in stopped.stderr
    assert len(sim.ledger()) == JOBS, "the stopped run sent nothing"

    rebuild = [*run[:3], "ledger", "rebuild", "--state-dir", str(tmp_path / "state-x")]
    rebuilt = _run(rebuild, env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    with RequestLedger(path.parent, "simulator") as ledger:
        kept = len(ledger.entries())
    assert kept < JOBS, f"the garbled page held no entry: {rebuilt.stdout}"

    last = _run(run, env)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    result = outcome(sim.ledger(), [tmp_path / "reports-x"])
    runs = result.reports.groupby("run_id")
    assert runs.ngroups == 2, "the stopped run wrote no report"
    assert (result.reports["status"] == "succeeded").all(), result.reports[["job_id", "status", "error"]]
    assert len(result.bills_per_job) == JOBS and set(result.bills_per_job.values()) == {1}, result.bills_per_job
    assert round(result.reports["cost_usd"].sum(), 4) == result.billed_usd
