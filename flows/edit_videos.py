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
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from klingflow import events
from klingflow.fal.backend import Logger, choose_backend, key_for, resolve_fal_key
from klingflow.fal.history import RecentRequests
from klingflow.fal.pricing import UnitPrice, dry_run_price, resolve_price
from klingflow.fal.queue import FalQueue
from klingflow.fal.slots import RequestSlots, ensure_global_limit
from klingflow.fal.uploads import UploadCache
from klingflow.inputs import InputPolicy
from klingflow.ledger.budget import Budget
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import Backend, EditParams, JobRecord, JobStatus
from klingflow.pipeline.backend import open_backend, target_namespace
from klingflow.pipeline.cancellation import cancel_outstanding_requests
from klingflow.pipeline.estimate import estimate
from klingflow.pipeline.intake import Intake
from klingflow.pipeline.job import PollSettings, RunContext
from klingflow.pipeline.peers import Admission, watched_history
from klingflow.pipeline.rows import as_follower, as_row, as_stopped
from klingflow.report.artifacts import ProgressTracker, ReportPaths
from tasks.edit import edit
from tasks.report import report

ADMIT_PER_SLOT = 2  # jobs in progress per request slot: one at fal, one uploading or downloading
STOPPED_REPORT_S = 20.0  # a stopped run's report must be written well within the worker's 30 s kill grace


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
        logger.info("request ledger: %s", ledger.where)  # password hidden
        inputs = input_policy(params)
        jobs = load_manifest(params.manifest, logger, inputs)
        logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
        async with (
            Intake(jobs, PreprocessSettings.from_params(params, inputs), logger) as intake,
            _backend(params, kind, key, logger) as fal,
        ):
            # read while inputs are prepared; read again before each new submit (another machine on this key)
            recent = None
            if fal is not None:
                # rows another run may have sent that fal does not list yet: its admitted jobs, and then some
                ahead = ADMIT_PER_SLOT * params.max_concurrency + 2
                recent = watched_history(fal, ledger, logger, start_margin_s=params.job_timeout_s, contest_rows=ahead)
                recent.expect(intake.jobs).prefetch()
            price = await _price(fal, params, kind, key, logger)
            seen = await intake.settled(params.estimate_wait_s if fal else None)
            keyed = [price.estimated(with_job_key(job, params.endpoint)) if job else None for job in seen]
            estimated = await announce_estimate(keyed, ledger, params, price)
            if fal is None or recent is None:
                jobs = [j.with_(status=JobStatus.dry_run) if j.ok else j for j in keyed if j is not None]
                backend = f"{kind.value} (dry run)"
            else:
                sheet = list(intake.jobs)  # each row as far as it got, for the report of a run stopped midway
                try:
                    jobs = await edit_all(intake, fal, recent, ledger, run_id, params, price, sheet)
                except BaseException:  # cancelled (UI, API, worker), interrupted: report what finished, then stop
                    stopped = [as_stopped(j, ledger.get(j.job_key) if j.job_key else None, run_id) for j in sheet]
                    await asyncio.shield(report_stopped(stopped, ledger, _about(params, run_id, started, fal.label)))
                    raise
                backend = fal.label
        # quote: Prefect would otherwise walk every record looking for futures
        paths = await report(quote(jobs), **_about(params, run_id, started, backend))
        _mark_reported(ledger, jobs, run_id)
    summary = summarize(run_id, jobs, estimated, paths)
    message = f"{summary.succeeded}/{summary.jobs} job(s) succeeded, ${summary.cost_usd:.2f} billed"
    logger.info("%s; report %s", message, summary.report_path)
    return Completed(message=message, data=summary) if summary.all_succeeded else Failed(message=message, data=summary)


def input_policy(params: EditParams) -> InputPolicy:
    """What the run may read (klingflow.inputs): anything from the command line; a deployment's run (or its
    subflow's) is confined to the manifest's folder and public hosts unless its parameters say otherwise."""
    context = FlowRunContext.get()
    deployed = bool(context and context.flow_run and context.flow_run.deployment_id) or bool(
        flow_run.get_parent_deployment_id()
    )
    folder = Path(params.manifest).expanduser().resolve().parent if deployed else None
    return InputPolicy.confined(
        params.input_roots, params.input_hosts, params.allow_private_addresses, default_root=folder
    )


def _mark_reported(ledger: RequestLedger, jobs: list[JobRecord], run_id: str) -> None:
    """The bills this run's report carries: no later report carries them again."""
    ledger.mark_reported([j.job_key for j in jobs if j.job_key and j.cost_usd and not j.reused], run_id)


def _about(params: EditParams, run_id: str, started: datetime, backend: str) -> dict[str, Any]:
    """What the report says about the run, besides its rows."""
    return {
        "run_id": run_id,
        "run_started_at": started,
        "backend": backend,
        "endpoint": params.endpoint,
        "report_dir": params.report_dir,
        "manifest": params.manifest,
        "run_name": params.run_name,
    }


async def report_stopped(jobs: list[JobRecord], ledger: RequestLedger, about: dict[str, Any]) -> None:
    """The report of a run stopped midway: the rows that finished, the rest `cancelled` saying where their money
    stands. Written in the report task's own code, not as a new task run, and bounded in time: the worker kills
    a cancelled run's process after its grace period, and stopping must not wait on a slow page."""
    logger = get_run_logger()
    try:
        paths = await asyncio.wait_for(report.fn(jobs, **about), STOPPED_REPORT_S)
    except Exception:  # the ledger keeps every bill: the next run reports what this one could not
        logger.warning("the stopped run's report could not be written; the next run reports its bills", exc_info=True)
        return
    _mark_reported(ledger, jobs, about["run_id"])
    finished = sum(j.status is JobStatus.succeeded for j in jobs)
    logger.warning("run stopped: %d/%d job(s) had finished; report %s", finished, len(jobs), paths.parquet_path)


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
    """Say what the run will cost before anything is paid (klingflow.pipeline.estimate); rows still being
    prepared (None) count at the endpoint's longest output, so the figure is then an upper bound."""
    figures = estimate(rows, price, lambda key: not params.force and ledger.has_result(key))
    text = figures.text(params.max_budget_usd, params.estimate_wait_s)
    get_run_logger().info(text)
    await acreate_markdown_artifact(
        key="klingflow-estimate",
        markdown=f"## Cost estimate\n\n{text}\n\nPrice: {price.label}.",
        description="Estimated cost before anything was uploaded",
    )
    return figures.total_usd


async def edit_all(
    intake: Intake,
    fal: FalQueue,
    recent: RecentRequests,
    ledger: RequestLedger,
    run_id: str,
    params: EditParams,
    price: UnitPrice,
    sheet: list[JobRecord],
) -> list[JobRecord]:
    """Run every job as soon as its inputs are ready, at most `max_concurrency` requests in flight; rows with
    one job key share a request. `sheet` holds each row as far as it got (a stopped run reports it)."""
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
            return await _edit_each(intake, ctx, sheet)


async def _edit_each(intake: Intake, ctx: RunContext, latest: list[JobRecord]) -> list[JobRecord]:
    """Every job once its own row is ready, admitted a few more at a time than the slots allow (an admitted job
    may be a Prefect task run: all of them started at once would keep the server busy while the first
    submissions wait); the first ready row of a job key leads, the rest follow it. `latest` holds each row as
    far as it got: an exception that escapes becomes that row, and a stopped run reports it."""
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
    # the manifest's order; from its end when another run on this key started first (klingflow.pipeline.peers)
    admission = Admission(ADMIT_PER_SLOT * ctx.params.max_concurrency, lambda: ctx.recent.reverse)

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
                    async with admission.turn(index):
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
            latest[index] = done
            progress.advance()
            events.job_finished(done)

    results = await asyncio.gather(*(one(i) for i in range(len(intake.jobs))), return_exceptions=True)
    return [as_row(job, result) for job, result in zip(latest, results, strict=True)]


async def _edit_one(job: JobRecord, ctx: RunContext, *, task_run: bool) -> JobRecord:
    """A job as a Prefect task run, or as a plain call: in big runs (`job_task_runs_max`) and for a job
    already paid for (reused, no fal work: a task run per row made a no-op re-run of 1,000 rows take
    three times Prefect's start-up)."""
    if not task_run or (not ctx.params.force and ctx.ledger.has_result(job.job_key)):
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
