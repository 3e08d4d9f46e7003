"""Never pay twice under real fal's faults: one test per way the pipeline used to pay twice (issue cases 1-6),
each asserting on the simulator's billing ledger (bills per job) and on the reports."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from klingflow.ledger.decide import JobState
from klingflow.ledger.schema import SQLITE_FILE
from klingflow.ledger.store import RequestLedger
from klingflow.media.synth import make_clip
from klingflow.simulator import FaultConfig, RouteFaults
from tests.conftest import fast_params, run_flow

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("money") / "clip.mp4", seconds=3, width=1280, height=720)


def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _jobs(clip: Path, n: int, prompt: str = "Edit {i} of @Video1") -> list[dict]:
    return [{"id": f"j{i}", "prompt": prompt.format(i=i), "video": str(clip)} for i in range(n)]


def bills_per_prompt(sim) -> Counter:
    return Counter(e.input["prompt"] for e in sim.ledger())


def reported_usd(tmp_path: Path) -> float:
    return round(float(pd.read_parquet(tmp_path / "reports")["cost_usd"].fillna(0).sum()), 2)


def ledger_usd(sim) -> float:
    return round(sum(float(e.cost_usd) for e in sim.ledger()), 2)


@pytest.mark.parametrize("fault", ["http_429", "http_500", "ingress_5xx", "drop"])
async def test_1_a_transient_error_on_the_result_is_not_a_failure(
    tmp_path: Path, simulator, clip: Path, fault: str
) -> None:
    """One 429/500/502/503/dropped answer on a finished request's result: retried, billed once, reported."""
    simulator.set_faults(FaultConfig(result=RouteFaults(**{fault: 1.0}, max_count=1), retry_after_s=0))
    state, summary = await run_flow(fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 2))))
    assert state == "COMPLETED", summary
    assert set(bills_per_prompt(simulator).values()) == {1}
    assert reported_usd(tmp_path) == ledger_usd(simulator) > 0


async def test_1b_results_unreachable_all_run_stay_resumable_and_the_next_run_pays_nothing(
    tmp_path: Path, simulator, clip: Path
) -> None:
    """If the result cannot be read at all in this run, the entry stays submitted; the next run collects it."""
    simulator.set_faults(FaultConfig(result=RouteFaults(http_500=1.0), retry_after_s=0))
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 1)))
    state, first = await run_flow(params)
    assert state == "FAILED" and first.statuses == {"j0": "failed"}
    with RequestLedger(Path(params.state_dir) / "requests", "simulator") as ledger:
        assert [e.state for e in ledger.entries()] == [JobState.submitted]
    simulator.set_faults(FaultConfig())
    state, _ = await run_flow(params)
    assert state == "COMPLETED"
    assert bills_per_prompt(simulator) == {"Edit 0 of @Video1": 1}
    assert reported_usd(tmp_path) == ledger_usd(simulator)
    assert list(pd.read_parquet(tmp_path / "reports").sort_values("run_started_at")["error_stage"].fillna("-")) == [
        "collect-unreachable",
        "-",
    ]


@pytest.mark.parametrize("how", ["cancel_fails", "cancel_ignored"])
async def test_2_a_cancel_after_the_timeout_is_not_a_cancel_until_fal_says_so(
    tmp_path: Path, make_simulator, clip: Path, how: str
) -> None:
    """Timed out, then the cancel fails (500) or fal completes it anyway: the bill is recorded, the output kept."""
    sim = make_simulator(time_scale=1.0)
    faults = (
        FaultConfig(cancel=RouteFaults(http_500=1.0))
        if how == "cancel_fails"
        else FaultConfig(cancel_running_completes_rate=1.0)
    )
    sim.set_faults(faults.model_copy(update={"retry_after_s": 0}))
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 1)), job_timeout_s=1.0)
    state, first = await run_flow(params)
    assert bills_per_prompt(sim) == {"Edit 0 of @Video1": 1}
    assert first.statuses == {"j0": "succeeded"}, first
    assert reported_usd(tmp_path) == ledger_usd(sim)
    state, second = await run_flow(params)
    assert state == "COMPLETED" and second.cost_usd == 0
    assert bills_per_prompt(sim) == {"Edit 0 of @Video1": 1}


async def test_2b_a_confirmed_cancel_is_recorded_and_never_billed(tmp_path: Path, simulator, clip: Path) -> None:
    """A request that never finishes is cancelled at the timeout; fal confirms it (499); nothing is billed."""
    simulator.set_faults(FaultConfig(hang_prompts_containing=["HANG"]))
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 1, "HANG {i} @Video1")), job_timeout_s=1.0)
    state, summary = await run_flow(params)
    assert state == "FAILED" and summary.statuses == {"j0": "cancelled"}
    assert simulator.ledger() == []
    with RequestLedger(Path(params.state_dir) / "requests", "simulator") as ledger:
        assert [e.state for e in ledger.entries()] == [JobState.cancelled]
    report = pd.read_parquet(tmp_path / "reports")
    assert "timed out after 1 s" in report.loc[0, "error"] and "not billed" in report.loc[0, "error"]


async def test_3_identical_rows_are_paid_once(tmp_path: Path, simulator, clip: Path) -> None:
    """Five rows with the same video and prompt: one request; four rows reused at no cost, same output."""
    rows = [{"id": f"same-{i}", "prompt": "One edit of @Video1", "video": str(clip)} for i in range(5)]
    state, summary = await run_flow(fast_params(tmp_path, _manifest(tmp_path, rows), max_concurrency=5))
    assert state == "COMPLETED", summary
    assert bills_per_prompt(simulator) == {"One edit of @Video1": 1}
    report = pd.read_parquet(tmp_path / "reports")
    assert report["reused"].sum() == 4 and report["request_id"].nunique() == 1
    assert report["output_path"].nunique() == 1
    assert reported_usd(tmp_path) == ledger_usd(simulator)


@pytest.mark.parametrize("how", ["truncated_ledger", "other_state_dir"])
async def test_4_a_lost_or_separate_ledger_adopts_what_fal_already_did(
    tmp_path: Path, simulator, clip: Path, how: str
) -> None:
    """The ledger is gone (truncated, or another state dir): fal's history is searched and the work adopted."""
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 3)))
    assert (await run_flow(params))[0] == "COMPLETED"
    if how == "truncated_ledger":
        (Path(params.state_dir) / "requests" / SQLITE_FILE).write_bytes(b"")
        again = params
    else:
        again = params.model_copy(update={"state_dir": str(tmp_path / "elsewhere"), "output_dir": str(tmp_path / "o2")})
    state, second = await run_flow(again)
    assert state == "COMPLETED", second
    assert set(bills_per_prompt(simulator).values()) == {1} and len(simulator.ledger()) == 3
    assert second.cost_usd == 0
    assert reported_usd(tmp_path) == ledger_usd(simulator)
    assert all(Path(p).is_file() for p in pd.read_parquet(tmp_path / "reports")["output_path"])


async def test_5_ids_that_are_paths_fail_before_any_spend(tmp_path: Path, simulator, clip: Path) -> None:
    """Ids with separators or '..' are a per-row error naming the row; nothing is billed for them."""
    rows = [
        {"id": "team/a", "prompt": "A @Video1", "video": str(clip)},
        {"id": "../escaped", "prompt": "B @Video1", "video": str(clip)},
        {"id": "fine", "prompt": "C @Video1", "video": str(clip)},
    ]
    state, _ = await run_flow(fast_params(tmp_path, _manifest(tmp_path, rows)))
    assert state == "COMPLETED"  # 1/3 succeeded
    assert bills_per_prompt(simulator) == {"C @Video1": 1}
    report = pd.read_parquet(tmp_path / "reports").set_index("row")
    assert report.loc[1, "error_stage"] == "manifest" and "row 1" in report.loc[1, "error"]
    assert "path separator" in report.loc[2, "error"]
    assert not (tmp_path / "escaped").exists()
    assert Path(report.loc[3, "output_path"]).parent == (tmp_path / "outputs").resolve()


async def test_6_a_failing_upload_is_retried_for_every_job_sharing_it(tmp_path: Path, simulator, clip: Path) -> None:
    """Two 500s on the one upload ten jobs share, and a failed download: all retried, every job succeeds."""
    simulator.set_faults(
        FaultConfig(upload=RouteFaults(http_500=1.0, max_count=2), download=RouteFaults(http_500=1.0, max_count=1))
    )
    state, summary = await run_flow(fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 10)), max_concurrency=4))
    assert state == "COMPLETED", summary
    assert summary.succeeded == 10 and len(simulator.ledger()) == 10
    assert simulator.counters()["uploads"] == 1
    assert reported_usd(tmp_path) == ledger_usd(simulator)


async def test_a_lost_submit_answer_is_settled_through_a_lagging_history(
    tmp_path: Path, make_simulator, clip: Path
) -> None:
    """fal accepted the POST, the answer was lost and the history lists it only later: adopted, billed once."""
    sim = make_simulator(history_lag_s=1.5)
    sim.set_faults(FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 1)), settle_window_s=30)
    state, summary = await run_flow(params)
    assert state == "COMPLETED", summary
    assert sim.counters()["submits"] == 1 and len(sim.ledger()) == 1
    assert reported_usd(tmp_path) == ledger_usd(sim)


async def test_a_billed_422_is_in_the_report_and_not_paid_again(tmp_path: Path, simulator, clip: Path) -> None:
    """fal may charge for an input it refuses: the row carries the charge; a re-run does not pay again."""
    simulator.set_faults(FaultConfig(reject_prompts_containing=["FLAGGED"], invalid_billed_rate=1.0))
    params = fast_params(tmp_path, _manifest(tmp_path, _jobs(clip, 1, "FLAGGED {i} @Video1")))
    state, first = await run_flow(params)
    assert state == "FAILED" and first.statuses == {"j0": "failed"}
    assert len(simulator.ledger()) == 1
    row = pd.read_parquet(tmp_path / "reports").iloc[0]
    assert "HTTP 422" in row["error"] and "content checker" in row["error"] and row["cost_source"] == "header"
    assert reported_usd(tmp_path) == ledger_usd(simulator) > 0
    state, _ = await run_flow(params)
    assert (
        state == "FAILED"
        and "fal refused this exact input before"
        in pd.read_parquet(tmp_path / "reports").sort_values("run_started_at").iloc[-1]["error"]
    )
    assert len(simulator.ledger()) == 1


async def _until_fal_is_idle(sim, timeout_s: float = 30.0) -> None:
    """Wait until the simulator has no request queued or running: every bill that will come has come."""
    deadline = time.monotonic() + timeout_s
    while any(gauge["in_flight"] for gauge in sim.counters()["keys"].values()):
        assert time.monotonic() < deadline, "requests still at fal"
        await asyncio.sleep(0.1)


async def test_a_lost_resubmit_is_not_taken_for_the_earlier_request_with_the_same_input(
    tmp_path: Path, make_simulator, clip: Path
) -> None:
    """Run 1's request times out and fal confirms the cancel; run 2 submits the job again and that answer is lost
    (fal accepted it). fal's history has the same input twice, and lists the new request only after a lag: the
    settle must wait for the new one, not take run 1's cancelled one, or the new request runs unwatched and its
    bill is in no report (issue 24, row 3)."""
    simulator = make_simulator(history_lag_s=1.5)
    simulator.set_faults(FaultConfig(hang_prompts_containing=["Slow"]))
    manifest = _manifest(tmp_path, _jobs(clip, 1, "Slow {i} of @Video1"))
    _, first = await run_flow(fast_params(tmp_path, manifest, job_timeout_s=1.0))
    assert first.statuses == {"j0": "cancelled"} and simulator.ledger() == []
    simulator.set_faults(FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1), retry_after_s=0))
    state, second = await run_flow(fast_params(tmp_path, manifest, settle_window_s=30))
    assert state == "COMPLETED", second
    await _until_fal_is_idle(simulator)
    assert simulator.counters()["faults"] == {"submit.drop_after": 1}
    assert second.statuses == {"j0": "succeeded"}, second
    assert bills_per_prompt(simulator) == {"Slow 0 of @Video1": 1}
    assert reported_usd(tmp_path) == ledger_usd(simulator) > 0
