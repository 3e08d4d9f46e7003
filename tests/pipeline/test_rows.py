"""Rows: identical work shares one result at no cost; an escaped exception is a row, never a lost report."""

from __future__ import annotations

import pytest

from klingflow.ledger.store import LedgerEntry
from klingflow.models import JobRecord, JobStatus, Stage
from klingflow.pipeline.rows import as_follower, as_row, as_stopped


def _job(row: int, **fields: object) -> JobRecord:
    return JobRecord(job_id=f"j{row}", row=row, prompt="p @Video1", video="v.mp4", job_key="k", **fields)


def test_a_follower_of_a_success_is_reused_at_no_cost() -> None:
    """Same output, same request, cost 0 and `reused`: the leader's row carries the bill."""
    leader = _job(
        1,
        status=JobStatus.succeeded,
        request_id="r",
        output_url="u",
        output_path="/o/j1-r.mp4",
        billed_seconds=3.0,
        cost_usd=1.008,
        cost_source="header",
    )
    follower = as_follower(_job(2), leader)
    assert (follower.status, follower.reused, follower.cost_usd, follower.cost_source) == (
        JobStatus.succeeded,
        True,
        0.0,
        "reused",
    )
    assert (follower.request_id, follower.output_path, follower.job_id) == ("r", "/o/j1-r.mp4", "j2")


def test_a_follower_of_a_failure_fails_naming_the_leader() -> None:
    """The follower says which row it shares its fate with and why that one failed."""
    leader = _job(1).fail(Stage.collect, "HTTP 500: boom")
    follower = as_follower(_job(2), leader)
    assert follower.status is JobStatus.failed and follower.error_stage is Stage.collect
    assert follower.error.startswith("row 2 (j2): same edit as row 1 (j1)") and "HTTP 500: boom" in follower.error
    assert follower.cost_usd is None


def test_an_escaped_exception_becomes_the_jobs_row() -> None:
    """gather(return_exceptions=True) hands us the exception: it is that job's failed row."""
    row = as_row(_job(3), RuntimeError("disk full"))
    assert row.status is JobStatus.failed
    assert row.error == "row 3 (j3): unexpected error: RuntimeError: disk full"
    assert as_row(_job(3), _job(3, status=JobStatus.succeeded)).status is JobStatus.succeeded


def _entry(state: str, run_id: str = "this-run", **fields: object) -> LedgerEntry:
    return LedgerEntry(job_key="k", state=state, job_id="j1", run_id=run_id, backend="sim", updated_at=0.0, **fields)


@pytest.mark.parametrize(
    ("entry", "status", "request_id", "cost", "says"),
    [
        (None, "cancelled", None, None, "before this job was submitted (nothing billed)"),
        (_entry("cancelled", request_id="r1"), "cancelled", "r1", None, "fal confirmed the cancel"),
        (_entry("cancel_requested", request_id="r1"), "cancelled", "r1", None, "fal may still complete and bill it"),
        (_entry("submitted", request_id="r1"), "cancelled", "r1", None, "asked to cancel"),
        (_entry("completed", request_id="r1", cost_usd=1.0), "cancelled", "r1", None, "the next run downloads it"),
        (_entry("unknown"), "cancelled", None, None, "looks for it in fal's request history"),
        (_entry("succeeded", request_id="r1", cost_usd=1.01, output_path="/o.mp4"), "succeeded", "r1", 1.01, None),
        (_entry("succeeded", run_id="earlier", request_id="r0"), "cancelled", "r0", None, "an earlier run paid"),
    ],
    ids=[
        "not-submitted",
        "cancel-confirmed",
        "cancel-asked",
        "at-fal",
        "billed-not-downloaded",
        "submit-lost",
        "finished-here",
        "paid-earlier",
    ],
)
def test_a_stopped_runs_row_says_where_its_money_stands(
    entry: LedgerEntry | None, status: str, request_id: str | None, cost: float | None, says: str | None
) -> None:
    """A job a stopped run did not finish is `cancelled` at no cost with the reason; one it finished (the ledger
    says so, its row had not come back yet) is `succeeded` with its bill."""
    row = as_stopped(_job(1), entry, "this-run")
    assert (row.status, row.request_id, row.cost_usd) == (status, request_id, cost)
    assert (says in (row.error or "")) if says else row.error is None
    assert as_stopped(_job(1).fail(Stage.preprocess, "bad"), entry, "this-run").error_stage == "preprocess"
