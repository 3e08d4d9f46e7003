"""The `edit_videos` flow: manifest → preprocess → estimate → edit (upload, submit, collect, download) → report.

Each job moves through the stages on its own (klingflow.pipeline.intake, tasks/edit.py,
klingflow.pipeline.job): it goes to fal as soon as its own inputs are ready; a failing job
becomes a report row with its error and never stops the others. The flow ends Failed when any job did
not succeed (or was skipped by the budget), Completed otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from klingflow import events
from klingflow.endpoint import MAX_DURATION_S
from klingflow.fal.backend import Logger, choose_backend, key_for, resolve_fal_key
from klingflow.fal.history import RecentRequests
from klingflow.fal.pricing import UnitPrice, dry_run_price, resolve_price
from klingflow.fal.queue import FalQueue
from klingflow.fal.slots import RequestSlots, ensure_global_limit
from klingflow.fal.uploads import UploadCache
from klingflow.ledger.budget import Budget
from klingflow.ledger.decide import JobState
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import Backend, EditParams, JobRecord, JobStatus
from klingflow.pipeline.backend import open_backend, target_namespace
from klingflow.pipeline.cancellation import cancel_outstanding_requests
from klingflow.pipeline.intake import Intake
from klingflow.pipeline.job import PollSettings, RunContext
from klingflow.pipeline.rows import as_follower, as_row
from klingflow.report.artifacts import ProgressTracker, ReportPaths
from tasks.edit import edit
from tasks.report import report

ADMIT_PER_SLOT = 2  # jobs in progress per request slot: one at fal, one uploading or downloading


class RunSummary(BaseModel):
    """What a run did, as the CLI and callers see it."""

    run_id: str
    jobs: int
    succeeded: int
    failed: int
    estimated_usd: float
    cost_usd: float
    report_path: str | None
    html_path: str | None
    statuses: dict[str, str]

    @property
    def all_succeeded(self) -> bool:
        return self.failed == 0


@flow(name="edit_videos", on_cancellation=[cancel_outstanding_requests])
async def edit_videos(params: EditParams) -> State:
    """Run every edit of a manifest through Kling O3 Pro (or the local simulator) and report."""
    logger = get_run_logger()
    run_id, started = str(flow_run.get_id() or uuid.uuid4()), datetime.now(UTC)
    key = resolve_fal_key(logger)  # once per run; passed down, never logged
    kind = choose_backend(params.backend, key, logger)
    with RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value) as ledger:
        jobs = load_manifest(params.manifest, logger)
        logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
        async with (
            Intake(jobs, PreprocessSettings.from_params(params), logger) as intake,
            _backend(params, kind, key, logger) as fal,
        ):
            recent = RecentRequests(fal, logger).prefetch() if fal else None  # read while inputs are prepared
            price = await _price(fal, params, kind, key, logger)
            seen = await intake.settled(params.estimate_wait_s if fal else None)
            keyed = [price.estimated(with_job_key(job, params.endpoint)) if job else None for job in seen]
            estimated = await announce_estimate(keyed, ledger, params, price)
            if fal is None or recent is None:
                jobs = [j.with_(status=JobStatus.dry_run) if j.ok else j for j in keyed if j is not None]
                backend = f"{kind.value} (dry run)"
            else:
                jobs = await edit_all(intake, fal, recent, ledger, run_id, params, price)
                backend = fal.label
        paths = await report(
            quote(jobs),  # quote: Prefect would otherwise walk every record looking for futures
            run_id=run_id,
            run_started_at=started,
            backend=backend,
            endpoint=params.endpoint,
            report_dir=params.report_dir,
            manifest=params.manifest,
            run_name=params.run_name,
        )
        ledger.mark_reported([j.job_key for j in jobs if j.job_key and j.cost_usd and not j.reused], run_id)
    summary = summarize(run_id, jobs, estimated, paths)
    message = f"{summary.succeeded}/{summary.jobs} job(s) succeeded, ${summary.cost_usd:.2f} billed"
    logger.info("%s; report %s", message, summary.report_path)
    return Completed(message=message, data=summary) if summary.all_succeeded else Failed(message=message, data=summary)


@asynccontextmanager
async def _backend(
    params: EditParams, kind: Backend, key: str | None, logger: Logger
) -> AsyncIterator[FalQueue | None]:
    """The run's connection to fal, or None for a dry run (which sends fal nothing)."""
    if params.dry_run:
        yield None
        return
    async with open_backend(params, kind, key, logger) as fal:
        yield fal


async def _price(fal: FalQueue | None, params: EditParams, kind: Backend, key: str | None, logger: Logger) -> UnitPrice:
    """The run's unit price: fal's for the key the run sends (a dry run sends nothing: the day's cached one)."""
    pricing = Path(params.state_dir).expanduser() / "pricing"
    if fal is not None:
        return await resolve_price(fal, pricing, logger)
    sent_key = key_for(kind, key) if key or kind is not Backend.fal else None
    return dry_run_price(pricing, target_namespace(kind), params.endpoint, sent_key, logger)


async def announce_estimate(
    rows: list[JobRecord | None], ledger: RequestLedger, params: EditParams, price: UnitPrice
) -> float:
    """Say what the run will cost before anything is paid (results already paid for cost nothing); rows still
    being prepared (None) count at the endpoint's longest output, so the figure is an upper bound."""
    jobs = [j for j in rows if j is not None]
    pending = len(rows) - len(jobs)
    ready = [j for j in jobs if j.ok]
    keys = {j.job_key for j in ready}
    paid = set() if params.force else {k for k in keys if _paid(ledger, k)}
    to_pay = {j.job_key: j for j in ready if j.job_key not in paid}  # identical rows are paid once
    seconds = sum(j.estimated_seconds or 0 for j in to_pay.values()) + pending * int(MAX_DURATION_S)
    bound = pending * price.cost(MAX_DURATION_S)
    total = round(sum(j.estimated_cost_usd or 0.0 for j in to_pay.values()) + bound, 4)
    cap = "no cap" if params.max_budget_usd is None else f"cap ${params.max_budget_usd:.2f}"
    waiting = (
        f", {pending} still being prepared after {params.estimate_wait_s:g} s (counted at {MAX_DURATION_S:.0f} s "
        "each, so the total is an upper bound)"
        if pending
        else ""
    )
    text = (
        f"estimate: {len(to_pay)} job(s) to pay for ({len(paid)} already paid, {len(ready) - len(keys)} identical "
        f"to another row, {len(jobs) - len(ready)} failed before submission{waiting}), {seconds} output second(s), "
        f"{'at most ' if pending else ''}${total:.2f} ({cap}); price {price.label}"
    )
    get_run_logger().info(text)
    await acreate_markdown_artifact(
        key="klingflow-estimate",
        markdown=f"## Cost estimate\n\n{text}\n\nPrice: {price.label}.",
        description="Estimated cost before anything was uploaded",
    )
    return total


def _paid(ledger: RequestLedger, job_key: str | None) -> bool:
    entry = ledger.get(job_key) if job_key else None
    return entry is not None and entry.state is JobState.succeeded


async def edit_all(
    intake: Intake,
    fal: FalQueue,
    recent: RecentRequests,
    ledger: RequestLedger,
    run_id: str,
    params: EditParams,
    price: UnitPrice,
) -> list[JobRecord]:
    """Run every job as soon as its inputs are ready, at most `max_concurrency` requests in flight; rows with
    one job key share a request."""
    logger = get_run_logger()
    limit = await ensure_global_limit(params.concurrency_limit, params.max_concurrency)
    logger.info("global concurrency limit %r: %d request(s) in flight", params.concurrency_limit, limit)
    slots = RequestSlots(params.concurrency_limit, params.max_concurrency, holder=_flow_run_id(run_id), log=logger)
    with UploadCache(Path(params.state_dir).expanduser() / "uploads", fal) as uploads:
        async with slots:
            await slots.warm(len(intake.jobs))
            ctx = RunContext(
                run_id=run_id,
                params=params,
                fal=fal,
                ledger=ledger,
                budget=Budget(params.max_budget_usd),
                slots=slots,
                uploads=uploads,
                poll=PollSettings(params.poll_interval_s, params.poll_max_interval_s, params.job_timeout_s),
                recent=recent,
                price=price,
            )
            return await _edit_each(intake, ctx)


async def _edit_each(intake: Intake, ctx: RunContext) -> list[JobRecord]:
    """Every job once its own row is ready, admitted a few more at a time than the slots allow (an admitted job
    may be a Prefect task run: all of them started at once would keep the server busy while the first
    submissions wait); the first ready row of a job key leads, the rest follow it."""
    progress = ProgressTracker(total=len(intake.jobs))
    task_runs = len(intake.jobs) <= ctx.params.job_task_runs_max
    if not task_runs:
        get_run_logger().info(
            "%d jobs: more than job_task_runs_max=%d, so no Prefect task run per job (their detail is in this "
            "log and the report)",
            len(intake.jobs),
            ctx.params.job_task_runs_max,
        )
    leaders: dict[str, asyncio.Future[JobRecord]] = {}
    admission = asyncio.Semaphore(ADMIT_PER_SLOT * ctx.params.max_concurrency)
    latest = list(intake.jobs)  # each row as far as it got: an exception that escapes becomes this row

    async def one(index: int) -> JobRecord:
        done = latest[index]
        try:
            job = with_job_key(await intake.ready(index), ctx.params.endpoint)
            job = done = latest[index] = ctx.price.estimated(job)
            if job.ok and job.job_key in leaders:
                done = as_follower(job, await asyncio.shield(leaders[job.job_key]))
            elif job.ok and job.job_key:
                leaders[job.job_key] = result = asyncio.get_running_loop().create_future()
                try:  # the leader runs in this task, so a cancelled run waits for its cancels at fal
                    async with admission:
                        done = await _edit_one(job, ctx, task_run=task_runs)
                except Exception as exc:
                    result.set_exception(exc)
                    result.exception()  # retrieved: followers re-raise it themselves
                    raise
                except BaseException:
                    result.cancel()
                    raise
                result.set_result(done)
            return done
        finally:
            progress.advance()
            events.job_finished(done)

    results = await asyncio.gather(*(one(i) for i in range(len(intake.jobs))), return_exceptions=True)
    return [as_row(job, result) for job, result in zip(latest, results, strict=True)]


async def _edit_one(job: JobRecord, ctx: RunContext, *, task_run: bool) -> JobRecord:
    """A job as a Prefect task run, or as a plain call: in big runs (`job_task_runs_max`) and for a job
    already paid for (reused, no fal work: a task run per row made a no-op re-run of 1,000 rows take
    three times Prefect's start-up)."""
    if not task_run or (not ctx.params.force and _paid(ctx.ledger, job.job_key)):
        return await edit.fn(job, ctx)
    return await edit(job, quote(ctx))  # quote: Prefect does not walk the run's shared objects


def _flow_run_id(run_id: str) -> uuid.UUID | None:
    """The flow run that holds the run's slots (None outside Prefect, where run ids are not flow runs)."""
    return uuid.UUID(run_id) if flow_run.get_id() else None


def summarize(run_id: str, jobs: list[JobRecord], estimated: float, paths: ReportPaths) -> RunSummary:
    """The report's totals for the run, plus each job's status (failed = failed, cancelled, skipped_budget)."""
    totals = paths.totals
    return RunSummary(
        run_id=run_id,
        jobs=totals.jobs,
        succeeded=totals.succeeded,
        failed=totals.failed,
        estimated_usd=estimated,
        cost_usd=round(totals.cost_usd, 4),
        report_path=str(paths.parquet_path),
        html_path=str(paths.html_path) if paths.html_path else None,
        statuses={j.job_id: j.status.value for j in jobs},
    )
