"""One job's life at fal: reuse a paid result, or resume a submitted request, or upload and submit;
then collect and download — never paying twice.

Order of writes to the request ledger (each a durable SQLite commit):
  "submitting" (before the POST) → "submitted" + request id (right after the answer)
  → "completed" + output URL and bill → "succeeded" + output file.
A crash after "submitted" is resumed by request id. A crash between "submitting" and "submitted"
(one HTTP round trip) is settled by the next run through fal's request history
(klingflow.fal.history): the request is adopted if fal has it, submitted if not. If the
history cannot be read, the job fails saying so and is not resent unless the user forces it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fal_client
import httpx

from klingflow.fal.backend import BackendSession
from klingflow.fal.history import HistoryUnavailable, find_request, payload_sha256
from klingflow.fal.slots import RequestSlots
from klingflow.hashing import sha256_file
from klingflow.ledger.budget import Budget
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.models import BILL_FIELDS, OUTPUT_FIELDS, EditParams, JobRecord
from tasks.collect import UNREACHABLE_STAGE, PollSettings, collect, download
from tasks.submit import UNKNOWN_OUTCOME_STAGE, edit_arguments, submit
from tasks.upload import UploadCache, upload


@dataclass
class RunContext:
    """Everything a job needs from its run."""

    run_id: str
    params: EditParams
    session: BackendSession
    ledger: RequestLedger
    budget: Budget
    slots: RequestSlots
    uploads: UploadCache
    poll: PollSettings


async def run_job(job: JobRecord, ctx: RunContext) -> JobRecord:
    """The whole life of one job; its failures end this job only."""
    if not job.ok or job.job_key is None:
        return job
    async with ctx.ledger.locked(job.job_key, ctx.run_id):
        entry = ctx.ledger.get(job.job_key)
        if entry is not None and not ctx.params.force:
            if entry.state == "succeeded":
                return await _reuse(job, entry, ctx)
            if entry.state in ("submitted", "completed") and entry.request_id:
                return await _resume(job, entry, ctx)
            if entry.state == "submitting":
                return await _settle_unknown(job, entry, ctx)
        return await _submit_new(job, ctx)


async def _settle_unknown(
    job: JobRecord, entry: LedgerEntry, ctx: RunContext, *, may_resubmit: bool = True
) -> JobRecord:
    """A submit whose answer was lost: adopt the request if fal's history has it, else submit (once)."""
    try:
        found = await find_request(
            ctx.session, ctx.params.endpoint, entry.payload_sha256 or "", entry.submitting_at or entry.updated_at
        )
    except HistoryUnavailable as exc:
        return job.fail(UNKNOWN_OUTCOME_STAGE, f"{_unknown_outcome(job, entry)} (request history: {exc})")
    if found is None:
        if not may_resubmit:
            return job.fail(UNKNOWN_OUTCOME_STAGE, f"{_unknown_outcome(job, entry)} (not in the request history)")
        return await _submit_new(job, ctx, may_resubmit=False)
    entry = ctx.ledger.update(
        job.job_key, state="submitted", request_id=found, submitted_at=entry.submitting_at or entry.updated_at
    )
    return await _resume(job, entry, ctx)


async def _submit_new(job: JobRecord, ctx: RunContext, *, may_resubmit: bool = True) -> JobRecord:
    estimate = job.estimated_cost_usd or 0.0
    if not ctx.budget.reserve(estimate):
        return job.model_copy(
            update={
                "status": "skipped_budget",
                "error": f"row {job.row} ({job.job_id}): not submitted: ${estimate:.2f} would exceed the budget of "
                f"${ctx.params.max_budget_usd:.2f} (${ctx.budget.committed_usd:.2f} already committed)",
                "error_stage": "budget",
            }
        )
    job = await _guarded(job, "upload", upload(job, ctx.uploads))
    if not job.ok:
        ctx.budget.settle(estimate, 0.0)
        return job
    uploaded = job
    async with ctx.slots.hold():
        digest = payload_sha256(edit_arguments(job))
        _record(ctx, job, "submitting", submitting_at=time.time(), payload_sha256=digest)
        job = await _guarded(job, UNKNOWN_OUTCOME_STAGE, submit(job, ctx.session, ctx.params.endpoint))
        if job.request_id is not None:
            ctx.ledger.update(job.job_key, state="submitted", request_id=job.request_id, submitted_at=time.time())
            job = await _collect(job, ctx)
    if job.request_id is None:
        ctx.budget.settle(estimate, 0.0)
        if job.error_stage == "submit":  # a sure rejection: nothing at fal, nothing billed
            ctx.ledger.update(job.job_key, state="failed", error=job.error)
            return job
        entry = ctx.ledger.get(job.job_key or "")
        if entry is None or entry.state != "submitting":
            return job
        return await _settle_unknown(uploaded, entry, ctx, may_resubmit=may_resubmit)
    ctx.budget.settle(estimate, job.cost_usd or 0.0)
    return await _download(job, ctx)


async def _resume(job: JobRecord, entry: LedgerEntry, ctx: RunContext) -> JobRecord:
    """A request an earlier run submitted: poll it by id instead of submitting again."""
    ctx.budget.reserve(job.estimated_cost_usd or 0.0, force=True)
    job = job.model_copy(
        update={
            "request_id": entry.request_id,
            "submitted_at": datetime.fromtimestamp(entry.submitted_at or entry.updated_at, UTC),
        }
    )
    if entry.state == "completed" and entry.output_url:
        job = _with_result(job, entry)
        if entry.billed_in_run:  # that run's report already counts the bill: this one must not
            job = _as_reused(job)
    else:
        async with ctx.slots.hold():
            job = await _collect(job, ctx)
    ctx.budget.settle(job.estimated_cost_usd or 0.0, job.cost_usd or 0.0)
    return await _download(job, ctx)


async def _reuse(job: JobRecord, entry: LedgerEntry, ctx: RunContext) -> JobRecord:
    """A result already paid for: point at its output (downloading it again if the file is gone)."""
    job = _as_reused(_with_result(job.model_copy(update={"request_id": entry.request_id}), entry, OUTPUT_FIELDS))
    path = Path(entry.output_path) if entry.output_path else None
    if path is not None and path.is_file() and await asyncio.to_thread(sha256_file, path) == entry.output_sha256:
        return job.model_copy(update={"status": "succeeded"})
    job = await _download(job, ctx)
    if job.status != "succeeded":
        return job.fail(
            "download",
            f"{job.error} — this result was paid for (request {entry.request_id}) but its output is gone; "
            "re-run with force=true to pay for it again",
        )
    return job


def _with_result(job: JobRecord, entry: LedgerEntry, fields: frozenset[str] = BILL_FIELDS) -> JobRecord:
    """The job with what the ledger knows of its paid result (the bill, and with OUTPUT_FIELDS the output)."""
    return job.model_copy(update=entry.model_dump(include=fields | BILL_FIELDS))


def _as_reused(job: JobRecord) -> JobRecord:
    """Paid for by an earlier run, whose report carries the bill: this run's row costs nothing."""
    return job.model_copy(update={"reused": True, "billed_seconds": 0.0, "cost_usd": 0.0, "cost_source": "reused"})


async def _collect(job: JobRecord, ctx: RunContext) -> JobRecord:
    """Wait for the request; on cancellation of this run, cancel it at fal first."""
    try:
        job = await _guarded(job, UNREACHABLE_STAGE, collect(job, ctx.session, ctx.params.endpoint, ctx.poll))
    except asyncio.CancelledError:
        await asyncio.shield(_cancel_at_fal(job, ctx))
        raise
    if job.output_url:
        ctx.ledger.update(job.job_key, state="completed", **job.model_dump(include=BILL_FIELDS))
    # When fal was not reached (collect-unreachable) the entry stays "submitted": the next run resumes it.
    elif job.status in ("failed", "cancelled") and job.error_stage != UNREACHABLE_STAGE:
        ctx.ledger.update(job.job_key, state="cancelled" if job.status == "cancelled" else "failed", error=job.error)
    return job


async def _download(job: JobRecord, ctx: RunContext) -> JobRecord:
    if not job.ok or not job.output_url:
        return job
    job = await _guarded(job, "download", download(job, ctx.params.output_dir))
    if job.status != "succeeded":
        if not job.reused:  # this run's report carries the bill; a later run that downloads it must not
            ctx.ledger.update(job.job_key, billed_in_run=ctx.run_id)
        return job
    ctx.ledger.update(job.job_key, state="succeeded", **job.model_dump(include=OUTPUT_FIELDS))
    return job


async def _cancel_at_fal(job: JobRecord, ctx: RunContext) -> None:
    """Cancel a request whose run is being cancelled, and record it (a queued request is never billed)."""
    if job.request_id is None:
        return
    try:
        handle = await ctx.session.client.get_handle(ctx.params.endpoint, job.request_id)
        await handle.cancel()
    except (fal_client.FalClientError, httpx.HTTPError):
        return  # already finished or unreachable: the ledger keeps "submitted", the next run resumes it
    ctx.ledger.update(job.job_key, state="cancelled", error="cancelled with the flow run")


def _record(ctx: RunContext, job: JobRecord, state: str, **fields: object) -> None:
    ctx.ledger.put(
        LedgerEntry(
            job_key=job.job_key or "",
            state=state,  # type: ignore[arg-type]
            job_id=job.job_id,
            run_id=ctx.run_id,
            backend=ctx.session.label,
            updated_at=time.time(),
            **fields,  # type: ignore[arg-type]
        )
    )


def _unknown_outcome(job: JobRecord, entry: LedgerEntry) -> str:
    when = datetime.fromtimestamp(entry.submitting_at or entry.updated_at, UTC).isoformat(timespec="seconds")
    return (
        f"row {job.row} ({job.job_id}): run {entry.run_id} was submitting this job at {when} and never learnt "
        "whether fal accepted it; it was not resent (that could pay twice). Check fal's request history, then "
        "re-run with force=true to submit it again"
    )


async def _guarded(job: JobRecord, stage: str, step: Awaitable[JobRecord]) -> JobRecord:
    """Turn an unexpected exception in a stage into this job's error."""
    try:
        return await step
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the batch
        return job.fail(stage, f"row {job.row} ({job.job_id}): {stage} failed: {exc.__class__.__name__}: {exc}")
