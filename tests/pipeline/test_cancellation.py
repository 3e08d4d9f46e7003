"""The on_cancellation hook writes a cancelled run's report when the flow could not (Prefect killed it)."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.schemas.objects import FlowRun

from klingflow.fal.outcomes import CancelReply, Done
from klingflow.fal.pricing import LIST_PRICE
from klingflow.ledger.decide import JobState
from klingflow.ledger.meaning import CancelReason
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.models import EditParams
from klingflow.pipeline.cancellation import _cancel, cancel_outstanding_requests
from klingflow.report.writer import run_file_name
from tests.pipeline.fakefal import Req, ScriptedFal


def _entry(job: str, state: str, run_id: str, **fields: object) -> LedgerEntry:
    return LedgerEntry(
        job_key=f"key-{job}",
        state=state,
        job_id=job,
        run_id=run_id,
        backend="simulator",
        updated_at=time.time(),
        **fields,
    )


async def test_a_killed_runs_report_comes_from_its_manifest_and_ledger(tmp_path: Path) -> None:
    """Rows it finished are succeeded with their bill (marked reported), the others cancelled saying why; a report
    the flow wrote is never replaced."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,prompt,video\na,Make @Video1 sunny,a.mp4\nb,Make @Video1 rainy,b.mp4\nc,Edit @Video1,c.mp4\n"
    )
    params = EditParams(
        manifest=str(manifest), backend="simulator", state_dir=str(tmp_path / "state"), report_dir=str(tmp_path / "r")
    )
    run = FlowRun(
        id=uuid.uuid4(),
        name="stopped-batch",
        flow_id=uuid.uuid4(),
        parameters={"params": params.model_dump(mode="json")},
    )
    run_id = str(run.id)
    with RequestLedger(tmp_path / "state" / "requests", namespace="simulator") as ledger:
        ledger.put(
            _entry("a", "succeeded", run_id, request_id="r-a", cost_usd=1.01, billed_seconds=3.0, report_pending=True)
        )
        ledger.put(_entry("b", "cancelled", run_id, request_id="r-b"))

    await cancel_outstanding_requests(None, run, None)

    report = pd.read_parquet(tmp_path / "r" / run_file_name(run_id)).set_index("job_id")
    assert report["status"].to_dict() == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    assert report.loc["a", "cost_usd"] == 1.01 and report["cost_usd"].fillna(0).sum() == 1.01
    assert "fal confirmed the cancel" in report.loc["b", "error"] and report.loc["b", "request_id"] == "r-b"
    assert "before this job was submitted" in report.loc["c", "error"]
    assert set(report["run_name"]) == {"stopped-batch"}
    with RequestLedger(tmp_path / "state" / "requests", namespace="simulator") as ledger:
        assert ledger.get("key-a").billed_in_run == run_id and not ledger.get("key-a").report_pending

    written = (tmp_path / "r" / run_file_name(run_id)).stat().st_mtime_ns
    await cancel_outstanding_requests(None, run, None)
    assert (tmp_path / "r" / run_file_name(run_id)).stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("state", "reason", "kept"),
    [
        ("submitted", None, CancelReason.run_cancelled),  # the hook sends the run's cancel
        ("cancel_requested", CancelReason.interrupted, CancelReason.interrupted),  # the stopping run sent it first
        ("cancel_requested", CancelReason.timeout, CancelReason.timeout),  # it had timed out before the run stopped
    ],
    ids=["hook-cancels", "interrupted-unacknowledged", "timeout-unacknowledged"],
)
async def test_the_hook_records_why_each_request_was_cancelled(
    tmp_path: Path, state: str, reason: CancelReason | None, kept: CancelReason
) -> None:
    """A request the hook cancels is `run_cancelled`; one the run had already asked to cancel keeps its reason, so
    the next run resubmits only what an interruption (not a timeout or a cancelled run) stopped."""
    fal = ScriptedFal([Req()], tmp_path / "unused.mp4")
    await fal.submit_once({"prompt": "p"})
    entry = _entry("a", state, "run", request_id="req-1", cancel_reason=reason)
    with RequestLedger(tmp_path / "requests", namespace="simulator") as ledger:
        ledger.put(entry)
        await _cancel(entry, fal, ledger, LIST_PRICE, logging.getLogger("test"))
        after = ledger.get(entry.job_key)
    assert after is not None and (after.state, after.cancel_reason) == (JobState.cancelled, kept)
    assert (fal.count("cancel"), sum(fal.bills.values())) == (1, 0)


async def test_a_request_that_completes_before_the_hooks_cancel_is_recorded_with_its_bill(tmp_path: Path) -> None:
    """fal answers ALREADY_COMPLETED: the entry is `completed`, billed at the run's price and owed to a report,
    so the next run downloads it and reports the bill (the hook used to fail here for want of a price)."""
    fal = ScriptedFal([Req(statuses=(Done(),), cancel=CancelReply.already_completed)], tmp_path / "unused.mp4")
    await fal.submit_once({"prompt": "p"})
    entry = _entry("a", "submitted", "run", request_id="req-1")
    with RequestLedger(tmp_path / "requests", namespace="simulator") as ledger:
        ledger.put(entry)
        await _cancel(entry, fal, ledger, LIST_PRICE, logging.getLogger("test"))
        after = ledger.get(entry.job_key)
    assert after is not None and after.state is JobState.completed and after.report_pending
    assert after.cost_usd == LIST_PRICE.cost(3.0) and after.output_url
