"""Never paying twice: concurrent runs, the budget cap, dry runs and cancellation, proven on the simulator's ledger."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from klingflow.media.synth import make_clip
from klingflow.pipeline.job import INTERRUPT_CANCEL_ATTEMPTS
from klingflow.simulator import FaultConfig
from tests.conftest import fast_params, run_flow

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("npt") / "clip.mp4", seconds=3, width=1280, height=720)


def _manifest(tmp_path: Path, clip: Path, prompts: list[str]) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"j{i}", "prompt": p, "video": str(clip)}) + "\n" for i, p in enumerate(prompts))
    )
    return path


async def test_two_concurrent_runs_submit_each_job_once(tmp_path: Path, simulator, clip: Path) -> None:
    """Two runs of one manifest at the same time: every job is billed once; the slower run reuses."""
    manifest = _manifest(tmp_path, clip, [f"Edit {i} @Video1" for i in range(3)])
    first = fast_params(tmp_path, manifest, report_dir=str(tmp_path / "r1"))
    second = fast_params(tmp_path, manifest, report_dir=str(tmp_path / "r2"))
    (s1, _), (s2, _) = await asyncio.gather(run_flow(first), run_flow(second))
    assert (s1, s2) == ("COMPLETED", "COMPLETED")
    assert len(simulator.ledger()) == 3
    assert {e.input["prompt"] for e in simulator.ledger()} == {f"Edit {i} @Video1" for i in range(3)}
    reports = pd.concat([pd.read_parquet(tmp_path / "r1"), pd.read_parquet(tmp_path / "r2")])
    assert reports["reused"].sum() == 3
    assert round(reports["cost_usd"].sum(), 2) == round(sum(float(e.cost_usd) for e in simulator.ledger()), 2)


async def test_budget_cap_is_never_exceeded(tmp_path: Path, simulator, clip: Path) -> None:
    """With a $2.50 cap and $1.01 jobs, two are submitted and the rest are skipped_budget."""
    manifest = _manifest(tmp_path, clip, [f"Budget {i} @Video1" for i in range(4)])
    state, summary = await run_flow(fast_params(tmp_path, manifest, max_budget_usd=2.5, max_concurrency=4))
    assert state == "COMPLETED"  # 2/4 succeeded
    assert sorted(summary.statuses.values()) == ["skipped_budget", "skipped_budget", "succeeded", "succeeded"]
    assert sum(float(e.cost_usd) for e in simulator.ledger()) <= 2.5
    assert len(simulator.ledger()) == 2
    report = pd.read_parquet(tmp_path / "reports")
    skipped = report[report["status"] == "skipped_budget"]
    assert skipped["error"].str.contains("exceed the budget").all()
    assert skipped["request_id"].isna().all()


async def test_dry_run_submits_nothing(tmp_path: Path, simulator, clip: Path) -> None:
    """A dry run preprocesses and estimates every job and leaves the ledger empty."""
    manifest = _manifest(tmp_path, clip, ["Dry @Video1", "Dry too @Video1"])
    state, summary = await run_flow(fast_params(tmp_path, manifest, dry_run=True))
    assert state == "COMPLETED"
    assert summary.estimated_usd == pytest.approx(2 * 1.008)
    assert simulator.ledger() == []
    assert simulator.counters()["submits"] == 0
    report = pd.read_parquet(tmp_path / "reports")
    assert (report["status"] == "dry_run").all()
    assert report["estimated_cost_usd"].sum() == pytest.approx(2.016)


@pytest.mark.parametrize("cancels", ["answered", "refused"])
async def test_ctrl_c_cancels_requests_queued_at_fal(tmp_path: Path, simulator, clip: Path, cancels: str) -> None:
    """Interrupting a CLI run cancels its requests at fal; if fal refuses those cancels, the next run sends
    them again. None of the requests is ever billed."""
    from klingflow.simulator import RouteFaults

    refusals = 3 * INTERRUPT_CANCEL_ATTEMPTS if cancels == "refused" else 0
    simulator.set_faults(
        FaultConfig(
            hang_prompts_containing=["HANG"],
            retry_after_s=0,
            cancel=RouteFaults(http_500=1.0, max_count=refusals) if refusals else RouteFaults(),
        )
    )
    manifest = _manifest(tmp_path, clip, [f"HANG {i} @Video1" for i in range(3)])
    output = _interrupt_cli_run(tmp_path, manifest, simulator, submits=3)
    assert "exit 130" in output and "Traceback" not in output, output[-3000:]
    assert float(output.rsplit("after ", 1)[1].split()[0]) <= 10.0, output[-3000:]
    if cancels == "refused":
        assert "cancelled" not in _outcomes(simulator), output[-3000:]
        assert output.count("the next run sends the cancel again") == 3, output[-3000:]
        _, summary = await run_flow(fast_params(tmp_path, manifest))
        assert summary.statuses == dict.fromkeys(["j0", "j1", "j2"], "cancelled"), summary
    assert _outcomes(simulator) == ["cancelled"] * 3
    assert simulator.ledger() == []


def _interrupt_cli_run(tmp_path: Path, manifest: Path, simulator, *, submits: int) -> str:
    """Run `klingflow run` in a subprocess, send SIGINT once `submits` requests are at fal; its output."""
    from prefect.settings import PREFECT_API_URL

    # the session's Prefect server (no temporary server per CLI run: it is the interruption under test)
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    cmd = [sys.executable, "-m", "klingflow.app.cli", "run", str(manifest), "--backend", "simulator"]
    cmd += ["--concurrency", str(submits), "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "outputs")]
    cmd += ["--report-dir", str(tmp_path / "reports"), "--poll-interval", "0.1", "--poll-max-interval", "0.2"]
    cmd += ["--concurrency-limit", f"klingflow-cancel-{tmp_path.name}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and simulator.counters()["submits"] < submits:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        assert simulator.counters()["submits"] == submits
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        stopped_s = time.monotonic() - interrupted
    finally:
        proc.kill()
    return f"{output}\nexit {proc.returncode} after {stopped_s:.1f} s"


def _outcomes(simulator) -> list[str]:
    requests = httpx.get(f"{simulator.url}/_simulator/requests").json()
    return [r["outcome"] for r in (requests["requests"] if isinstance(requests, dict) else requests)]


async def test_lost_submit_answer_is_adopted_from_the_request_history(tmp_path: Path, simulator, clip: Path) -> None:
    """fal accepted the POST but the answer was lost: the job adopts that request; billed once."""
    from klingflow.simulator import RouteFaults

    simulator.set_faults(FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    manifest = _manifest(tmp_path, clip, ["Lost answer @Video1"])
    state, summary = await run_flow(fast_params(tmp_path, manifest))
    assert state == "COMPLETED", summary
    assert simulator.counters()["submits"] == 1
    assert len(simulator.ledger()) == 1
    report = pd.read_parquet(tmp_path / "reports")
    assert report.loc[0, "request_id"] == simulator.ledger()[0].request_id


async def test_crash_between_post_and_ledger_write_is_settled(tmp_path: Path, simulator, clip: Path) -> None:
    """A ledger left at "submitting" (a crash mid-POST) is resumed from fal's history, not resent."""
    from klingflow.ledger.store import RequestLedger
    from klingflow.simulator import RouteFaults

    simulator.set_faults(FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    manifest = _manifest(tmp_path, clip, ["Crash mid-submit @Video1"])
    params = fast_params(tmp_path, manifest)
    # first run: the answer is lost and settled in-run; then rewind the ledger to "submitting" as a crash would
    assert (await run_flow(params))[0] == "COMPLETED"
    ledger = RequestLedger(Path(params.state_dir) / "requests", "simulator")
    (entry,) = ledger.entries()
    ledger.update(entry.job_key, state="submitting", request_id=None)
    ledger.close()
    for path in (tmp_path / "outputs").iterdir():
        path.unlink()
    state, summary = await run_flow(params)
    assert state == "COMPLETED", summary
    assert simulator.counters()["submits"] == 1
    assert len(simulator.ledger()) == 1
    assert summary.cost_usd == pytest.approx(1.008)  # the resumed request's bill belongs to this run's report


async def test_a_submit_lost_in_an_earlier_run_is_resent_with_its_files_uploaded(
    tmp_path: Path, simulator, clip: Path
) -> None:
    """Run 1 loses the submit's answer and cannot read fal's history; run 2 proves the POST never arrived
    and sends it again, uploading the job's files in that run (they were uploaded by run 1 only)."""
    from klingflow.simulator import RouteFaults

    simulator.set_faults(
        FaultConfig(submit=RouteFaults(drop=1.0, max_count=1), platform=RouteFaults(http_500=1.0), retry_after_s=0)
    )
    params = fast_params(tmp_path, _manifest(tmp_path, clip, ["Lost before fal @Video1"]), settle_window_s=1.0)
    state, first = await run_flow(params)
    assert (state, first.statuses) == ("FAILED", {"j0": "failed"})
    assert simulator.counters()["submits"] == 0
    simulator.set_faults(FaultConfig())
    state, second = await run_flow(params)
    assert (state, second.statuses) == ("COMPLETED", {"j0": "succeeded"}), second
    (bill,) = simulator.ledger()
    assert bill.input["video_url"].startswith(simulator.url)
    report = pd.read_parquet(tmp_path / "reports").sort_values("run_started_at")
    assert list(report["error_stage"].fillna("")) == ["submit-unknown", ""]
    assert report["cost_usd"].fillna(0).sum() == pytest.approx(float(bill.cost_usd))


async def test_failed_download_is_recovered_next_run_without_paying_or_counting_twice(
    tmp_path: Path, simulator, clip: Path
) -> None:
    """The output could not be downloaded even after retries: the next run fetches the paid result; billed once."""
    from klingflow.simulator import RouteFaults

    simulator.set_faults(FaultConfig(download=RouteFaults(http_500=1.0, max_count=5), retry_after_s=0))
    params = fast_params(tmp_path, _manifest(tmp_path, clip, ["Download me @Video1"]))
    state, first = await run_flow(params)
    assert state == "FAILED"
    assert first.statuses == {"j0": "failed"}
    state, second = await run_flow(params)
    assert second.cost_usd == 0
    assert state == "COMPLETED"
    assert len(simulator.ledger()) == 1
    history = pd.read_parquet(tmp_path / "reports").sort_values("run_started_at")
    assert list(history["status"]) == ["failed", "succeeded"]
    assert list(history["reused"]) == [False, True]
    assert round(history["cost_usd"].sum(), 2) == round(float(simulator.ledger()[0].cost_usd), 2)
    assert Path(history.iloc[1]["output_path"]).is_file()


async def test_a_rerun_into_another_output_dir_gets_the_paid_outputs_there(
    tmp_path: Path, simulator, clip: Path
) -> None:
    """`--out other` for jobs already paid: nothing is paid again, and every output is in `other`."""
    manifest = _manifest(tmp_path, clip, [f"Once {i} @Video1" for i in range(2)])
    assert (await run_flow(fast_params(tmp_path, manifest)))[0] == "COMPLETED"
    other = tmp_path / "other-outputs"
    state, _ = await run_flow(fast_params(tmp_path, manifest, output_dir=str(other), report_dir=str(tmp_path / "r2")))
    assert state == "COMPLETED" and len(simulator.ledger()) == 2
    rerun = pd.read_parquet(tmp_path / "r2")
    assert rerun["reused"].all()
    for _, row in rerun.iterrows():
        path = Path(row["output_path"])
        assert path.parent == other.resolve() and path.is_file()
        first = next((tmp_path / "outputs").glob(f"{row['job_id']}-*.mp4"))
        assert path.read_bytes() == first.read_bytes()
