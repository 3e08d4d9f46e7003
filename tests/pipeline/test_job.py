"""The job driver through every state, in milliseconds: a scripted fal (tests/pipeline/fakefal.py), a real SQLite
request ledger, local slots, no Prefect. Each test counts POSTs and bills at fal and reads the ledger."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from klingflow.errors import FalTransient
from klingflow.fal.history import RecentRequests
from klingflow.fal.outcomes import CancelReply, Failure, Running, Unknown
from klingflow.fal.pricing import LIST_PRICE
from klingflow.fal.slots import LocalSlots
from klingflow.fal.uploads import UploadCache
from klingflow.ledger.budget import Budget
from klingflow.ledger.decide import JobState
from klingflow.ledger.meaning import CancelReason
from klingflow.ledger.store import LedgerEntry, LockOwner, RequestLedger
from klingflow.media.synth import make_clip
from klingflow.models import CostSource, EditParams, JobRecord, JobStatus, Stage
from klingflow.pipeline.job import PollSettings, RunContext, run_job
from tests.pipeline.fakefal import Req, ScriptedFal

KEY = "key-j1"


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every output's bytes: a valid 3 s MP4 (the download is probed and its duration checked)."""
    return make_clip(tmp_path_factory.mktemp("job") / "out.mp4", seconds=3, width=320, height=240, fps=8, audio=False)


def _job() -> JobRecord:
    """A job ready to submit (its files already at fal: no upload)."""
    job = JobRecord(
        job_id="j1",
        row=1,
        prompt="Make @Video1 sunny",
        video="/in/j1.mp4",
        job_key=KEY,
        video_url="https://fake.fal/files/j1.mp4",
        input_duration_s=3.0,
        estimated_seconds=3,
    )
    return LIST_PRICE.estimated(job)


@contextmanager
def _run(tmp_path: Path, fal: ScriptedFal, *, timeout_s: float = 60.0, settle_s: float = 900.0) -> Iterator[RunContext]:
    """One run's context over the shared state dir; its ledger closes with the run (its bills' owner is gone)."""
    params = EditParams(
        manifest=str(tmp_path / "m.csv"),
        output_dir=str(tmp_path / "out"),
        state_dir=str(tmp_path / "state"),
        settle_window_s=settle_s,
        job_timeout_s=timeout_s,
    )
    with (
        RequestLedger(tmp_path / "state" / "requests", namespace="simulator") as ledger,
        UploadCache(tmp_path / "state" / "uploads", fal) as uploads,
    ):
        yield RunContext(
            run_id=str(uuid.uuid4()),
            params=params,
            fal=fal,
            ledger=ledger,
            budget=Budget(None),
            slots=LocalSlots(2),
            uploads=uploads,
            poll=PollSettings(0.001, 0.002, timeout_s),
            recent=RecentRequests(fal, min_interval_s=0.0),  # a history read per submit, without waiting
            price=LIST_PRICE,
        )


async def _stopped(ctx: RunContext, fal: ScriptedFal, method: str, call: int = 1) -> LedgerEntry:
    """Run the job until its `call`-th call of `method`, cancel its task there (a stopping run), read the ledger."""
    await ctx.recent.items()  # the run's adoption read of the history, before the stall is armed
    reached = fal.stall(method, call=call)
    task = asyncio.create_task(run_job(_job(), ctx))
    waiter = asyncio.create_task(reached.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert reached.is_set(), task.result()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    entry = ctx.ledger.get(KEY)
    assert entry is not None
    return entry


def _entry(tmp_path: Path) -> LedgerEntry:
    with RequestLedger(tmp_path / "state" / "requests", namespace="simulator") as ledger:
        entry = ledger.get(KEY)
    assert entry is not None
    return entry


async def test_a_job_is_submitted_polled_collected_and_downloaded(tmp_path: Path, clip: Path) -> None:
    """The happy path: one POST, one bill, a verified output, and the ledger's entry succeeded with its bill."""
    fal = ScriptedFal([Req()], clip)
    with _run(tmp_path, fal) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded, row.error
    assert (fal.count("submit_once"), sum(fal.bills.values())) == (1, 1)
    assert row.cost_usd and row.cost_source is CostSource.header and Path(row.output_path or "").is_file()
    entry = _entry(tmp_path)
    assert (entry.state, entry.cost_usd, entry.report_pending) == (JobState.succeeded, row.cost_usd, True)


async def test_a_lost_submit_answer_is_found_in_the_history_and_collected(tmp_path: Path, clip: Path) -> None:
    """The POST's answer is lost but fal queued it: the history finds it; polled and collected, one POST, one bill."""
    fal = ScriptedFal([Req(answer=Unknown("read timeout after the request was sent"))], clip)
    with _run(tmp_path, fal) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded, row.error
    assert (row.request_id, fal.count("submit_once"), dict(fal.bills)) == ("req-1", 1, {"req-1": 1})


async def test_a_lost_submit_fal_never_had_is_resent_once_its_absence_is_proven(tmp_path: Path, clip: Path) -> None:
    """Not in the history after the settle window (every request listed with its payload): sent again, 2 POSTs,
    1 bill."""
    fal = ScriptedFal([Req(answer=Unknown("dropped"), queued=False)], clip)
    with _run(tmp_path, fal, settle_s=0.001) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded, row.error
    assert (fal.count("submit_once"), dict(fal.bills)) == (2, {"req-2": 1})


async def test_a_timed_out_request_that_completes_anyway_is_billed_and_downloaded(tmp_path: Path, clip: Path) -> None:
    """Timeout → cancel → fal says it is already completed: the output is fetched, billed once and downloaded."""
    fal = ScriptedFal([Req(statuses=(Running(),), cancel=CancelReply.already_completed)], clip)
    with _run(tmp_path, fal, timeout_s=0.05) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded, row.error
    assert (fal.count("cancel"), dict(fal.bills)) == (1, {"req-1": 1})
    assert _entry(tmp_path).cancel_reason is CancelReason.timeout


async def test_a_timed_out_request_whose_cancel_fal_confirms_is_cancelled_unbilled(tmp_path: Path, clip: Path) -> None:
    """Timeout → cancel accepted → 499: the row is cancelled saying it timed out, nothing billed, nothing resent."""
    fal = ScriptedFal([Req(statuses=(Running(),))], clip)
    with _run(tmp_path, fal, timeout_s=0.05) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.cancelled and "timed out after" in (row.error or ""), row.error
    assert (fal.count("submit_once"), sum(fal.bills.values()), row.cost_usd) == (1, 0, None)
    entry = _entry(tmp_path)
    assert (entry.state, entry.cancel_reason, entry.fal_status) == (JobState.cancelled, CancelReason.timeout, 499)


async def test_a_timeout_cancel_confirmed_by_the_next_run_stays_cancelled(tmp_path: Path, clip: Path) -> None:
    """Stopped while cancelling at the timeout: the next run sends the cancel again and, once fal confirms it,
    the job stays cancelled in that run (its row says it timed out), with no new POST."""
    fal = ScriptedFal([Req(statuses=(Running(),))], clip)
    with _run(tmp_path, fal, timeout_s=0.05) as ctx:
        entry = await _stopped(ctx, fal, "cancel")
    assert (entry.state, entry.cancel_reason, entry.cancel_requested_at) == (
        JobState.cancel_requested,
        CancelReason.timeout,
        None,
    )
    with _run(tmp_path, fal, timeout_s=0.05) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.cancelled and "timed out" in (row.error or ""), row.error
    assert (fal.count("submit_once"), fal.count("cancel"), sum(fal.bills.values())) == (1, 2, 0)
    assert _entry(tmp_path).state is JobState.cancelled


async def test_a_request_cancelled_because_its_run_was_interrupted_is_resubmitted_by_one_rerun(
    tmp_path: Path, clip: Path
) -> None:
    """Stopped while at fal: the stopping run cancels it (reason interrupted); the next run learns fal cancelled it
    and submits the job again in the same run, which succeeds — 2 POSTs, 1 bill, one re-run."""
    fal = ScriptedFal([Req(statuses=(Running(),)), Req()], clip)
    with _run(tmp_path, fal) as ctx:
        entry = await _stopped(ctx, fal, "status")
    assert (entry.state, entry.cancel_reason) == (JobState.cancel_requested, CancelReason.interrupted)
    assert entry.cancel_requested_at is not None
    with _run(tmp_path, fal) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded and row.request_id == "req-2", row.error
    assert (fal.count("submit_once"), dict(fal.bills)) == (2, {"req-2": 1})
    entry = _entry(tmp_path)
    assert (entry.state, entry.request_id, entry.cancel_reason) == (JobState.succeeded, "req-2", None)


async def test_an_interrupted_request_whose_cancel_failed_is_collected_by_the_next_run(
    tmp_path: Path, clip: Path
) -> None:
    """The stopping run's cancel never reached fal: the next run polls the request, which completes — collected
    and billed once, never resubmitted."""
    fal = ScriptedFal([Req(cancel=FalTransient("HTTP 503"))], clip)
    with _run(tmp_path, fal) as ctx:
        entry = await _stopped(ctx, fal, "status")
    assert (entry.state, entry.cancel_reason, entry.cancel_requested_at) == (
        JobState.cancel_requested,
        CancelReason.interrupted,
        None,
    )
    with _run(tmp_path, fal) as ctx:
        row = await run_job(_job(), ctx)
    assert row.status is JobStatus.succeeded and row.request_id == "req-1", row.error
    assert (fal.count("submit_once"), fal.count("cancel"), dict(fal.bills)) == (1, 1, {"req-1": 1})


@pytest.mark.parametrize(
    ("stall", "call", "left"),
    [
        ("submit_once", 1, JobState.unknown),  # the POST's answer never came
        ("status", 1, JobState.cancel_requested),  # at fal: cancelled on the way out
        ("history", 2, JobState.unknown),  # settling a lost answer (the 1st read: the look just before the POST)
        ("cancel", 1, JobState.cancel_requested),  # cancelling at the timeout
        ("download", 1, JobState.completed),  # billed, not downloaded
    ],
    ids=["submitting", "submitted", "unknown", "cancel_requested", "completed"],
)
async def test_a_run_stopped_at_any_state_is_finished_by_the_next_with_at_most_one_bill(
    tmp_path: Path, clip: Path, stall: str, call: int, left: JobState
) -> None:
    """Wherever the stop lands, the ledger says where the job stands, and one more run ends it for good (an output,
    or a timed-out cancel) without paying twice."""
    script = {"history": Req(answer=Unknown("read timeout")), "cancel": Req(statuses=(Running(),))}
    fal = ScriptedFal([script.get(stall, Req())], clip)
    timeout_s = 0.05 if stall == "cancel" else 60.0
    with _run(tmp_path, fal, timeout_s=timeout_s) as ctx:
        entry = await _stopped(ctx, fal, stall, call)
    assert entry.state is left
    with _run(tmp_path, fal, timeout_s=timeout_s) as ctx:
        row = await run_job(_job(), ctx)
    final = _entry(tmp_path)
    assert sum(fal.bills.values()) <= 1
    if stall == "cancel":
        assert (row.status, final.state, sum(fal.bills.values())) == (JobStatus.cancelled, JobState.cancelled, 0)
    else:
        assert (row.status, final.state, sum(fal.bills.values())) == (JobStatus.succeeded, JobState.succeeded, 1)
        assert row.cost_usd == final.cost_usd and row.cost_usd and not row.reused  # this run's report has the bill


def _billed_entry(owner: LockOwner) -> LedgerEntry:
    """fal completed and billed the job in an earlier run, which never downloaded or reported it."""
    return LedgerEntry(
        job_key=KEY,
        state=JobState.completed,
        job_id="j1",
        run_id="earlier",
        backend="scripted fal",
        request_id="req-0",
        output_url="https://fake.fal/outputs/req-0.mp4",
        billed_seconds=3.0,
        cost_usd=0.84,
        cost_source=CostSource.header,
        report_pending=True,
        bill_owner=owner,
        updated_at=time.time(),
    )


@pytest.mark.parametrize("owner_alive", [False, True], ids=["dead-owner", "live-owner"])
async def test_a_dead_runs_bill_is_taken_over_by_the_run_that_collects_it(
    tmp_path: Path, clip: Path, owner_alive: bool
) -> None:
    """A billed, undownloaded request: this run downloads it without paying; its row carries the bill only when the
    run that saw the bill is gone (a live one reports it itself: this row is reused at no cost)."""
    fal = ScriptedFal([], clip)
    with (
        RequestLedger(tmp_path / "other-run", namespace="simulator") as other,
        _run(tmp_path, fal) as ctx,
    ):
        token = other.token if owner_alive else "a-run-that-died"
        owner = LockOwner(host=socket.gethostname(), pid=os.getpid(), token=token, run_id="earlier", lease_until=1e12)
        ctx.ledger.put(_billed_entry(owner))
        row = await run_job(_job(), ctx)
        entry = ctx.ledger.get(KEY)
        ctx.ledger.mark_reported([KEY], ctx.run_id)  # as the flow does once its report is written
    assert row.status is JobStatus.succeeded, row.error
    assert (fal.count("submit_once"), fal.count("download"), sum(fal.bills.values())) == (0, 1, 0)
    assert entry is not None and entry.state is JobState.succeeded and entry.bill_owner is not None
    if owner_alive:
        assert (row.cost_usd, row.reused, entry.bill_owner.token) == (0.0, True, other.token)
        return
    assert (row.cost_usd, row.reused, entry.bill_owner.token) == (0.84, False, ctx.ledger.token)
    with _run(tmp_path, fal) as ctx:  # a report carries it now: the next run's row costs nothing
        again = await run_job(_job(), ctx)
    assert (again.status, again.cost_usd, again.reused) == (JobStatus.succeeded, 0.0, True)


async def test_an_input_fal_refused_is_not_paid_for_again(tmp_path: Path, clip: Path) -> None:
    """A 422 ends the job as failed_at_fal: the next run refuses the same input instead of submitting it again."""
    fal = ScriptedFal([Req(result=Failure(422, "prompt refused"))], clip)
    with _run(tmp_path, fal) as ctx:
        first = await run_job(_job(), ctx)
    with _run(tmp_path, fal) as ctx:
        second = await run_job(_job(), ctx)
    assert (first.status, first.error_stage) == (JobStatus.failed, Stage.collect)
    assert second.status is JobStatus.failed and "refused this exact input" in (second.error or "")
    assert (fal.count("submit_once"), sum(fal.bills.values())) == (1, 0)
