"""A run's rows: every job ends as exactly one, whatever happened to it.

Rows with the same job key are the same paid work: the first is submitted, the others share its
request and are reported `reused` (cost 0, the same output). An exception that escaped a job becomes
that job's row, so the run's report is never lost.
"""

from __future__ import annotations

from klingflow.ledger.decide import JobState
from klingflow.ledger.meaning import MEANING
from klingflow.ledger.store import LedgerEntry
from klingflow.models import OUTPUT_FIELDS, CostSource, JobRecord, JobStatus, PaidResult, Stage


def as_follower(job: JobRecord, leader: JobRecord) -> JobRecord:
    """A row identical to `leader`'s work: its outcome, at no cost."""
    if leader.status is not JobStatus.succeeded:
        reason = f"same edit as {leader.where}, which did not succeed: {leader.error or leader.status.value}"
        return job.fail(
            leader.error_stage or Stage.collect, reason, status=leader.status if not leader.ok else JobStatus.failed
        )
    return job.with_(
        **leader.model_dump(
            include=OUTPUT_FIELDS
            | {
                "output_url",
                "request_id",
                "submitted_at",
                "started_at",
                "completed_at",
                "video_url",
                "image_urls",
                "element_urls",
            }
        ),
        status=JobStatus.succeeded,
        reused=True,
        billed_seconds=0.0,
        cost_usd=0.0,
        cost_source=CostSource.reused,
    )


def as_row(job: JobRecord, result: JobRecord | BaseException) -> JobRecord:
    """The job's row: its result, or its input marked failed with the exception that escaped."""
    if isinstance(result, JobRecord):
        return result
    stage = Stage.submit_unknown if job.request_id is None and job.ok else Stage.collect
    return job.fail(stage, f"unexpected error: {result.__class__.__name__}: {result}")


def as_stopped(job: JobRecord, entry: LedgerEntry | None, run_id: str) -> JobRecord:
    """The row of a job when its run stopped (from the request ledger, which the job kept up to date as it
    stopped): a job this run had finished is `succeeded` with its bill; any other is `cancelled`, saying where
    its money stands, at no cost (a bill fal still sends is carried by the report of the run that collects it)."""
    if not job.ok or job.status is JobStatus.succeeded:
        return job
    if entry is not None and entry.state is JobState.succeeded and entry.run_id == run_id:
        paid = entry.model_dump(include=set(PaidResult.model_fields))
        return job.with_(**paid, job_key=entry.job_key, request_id=entry.request_id, status=JobStatus.succeeded)
    request = {"request_id": entry.request_id} if entry is not None and entry.request_id else {}
    state = entry.state if entry is not None else JobState.planned
    return job.with_(**request).fail(Stage.collect, MEANING[state].stopped, status=JobStatus.cancelled)
