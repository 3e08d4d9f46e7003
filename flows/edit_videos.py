"""The `edit_videos` flow: manifest → preprocess → estimate → edit (upload, submit, collect, download) → report.

Each job moves through the stages on its own (klingflow.pipeline.intake, tasks/edit.py,
klingflow.pipeline.job): it goes to fal as soon as its own inputs are ready; a failing job
becomes a report row with its error and never stops the others. How the flow run ends (`final_state`):
Completed when every job succeeded; when some failed (or were skipped by the budget) and some succeeded,
Completed under the name "N/M succeeded" (the count shows on the run's page and in the runs list), unless
the run's `fail_run_on_job_failure` is set, then Failed; Failed when no job succeeded. The message always
says "N/M job(s) succeeded, $X billed"; the CLI exits 1 whenever a job failed.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
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
from klingflow.fal.backend import Logger
from klingflow.fal.pricing import UnitPrice
from klingflow.inputs import InputPolicy
from klingflow.ledger.budget import Budget
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.models import EditParams, JobRecord, JobStatus
from klingflow.orchestrator import PrefectLink
from klingflow.pipeline.cancellation import cancel_outstanding_requests
from klingflow.pipeline.estimate import estimate
from klingflow.pipeline.intake import Intake
from klingflow.pipeline.job import PollSettings, RunContext
from klingflow.pipeline.peers import Admission
from klingflow.pipeline.resources import ADMIT_PER_SLOT, RunResources, open_run
from klingflow.pipeline.rows import as_follower, as_row, as_stopped
from klingflow.pipeline.stopping import STOP_SIGNALS, signal_name, stop_on_signals
from klingflow.report.artifacts import ProgressTracker, ReportPaths
from tasks.edit import edit
from tasks.report import report

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
    signals = (signal.SIGINT,) if deployed() else STOP_SIGNALS  # a worker's SIGTERM is Prefect's (stopping.py)
    with stop_on_signals(lambda signum: _stopping(signum, logger), signals):
        async with open_run(params, run_id, input_policy(params), logger, slot_holder=_flow_run_id(run_id)) as run:
            keyed = await estimated_rows(run)
            estimated = await announce_estimate(keyed, run.ledger, params, run.price)
            if run.sending is None:
                jobs = [j.with_(status=JobStatus.dry_run) if j.ok else j for j in keyed if j is not None]
                backend = f"{run.kind.value} (dry run)"
            else:
                jobs = await edit_or_report_stop(run, started)
                backend = run.sending.fal.label
            # quote: Prefect would otherwise walk every record looking for futures
            paths = await report(quote(jobs), **_about(params, run_id, started, backend), link=quote(run.link))
            _mark_reported(run.ledger, jobs, run_id)
            summary = summarize(run_id, jobs, estimated, paths)
            events.run_notice(events.RunNotice(summary=summary, orchestrator_down=run.link.is_down))
    message = f"{summary.succeeded}/{summary.jobs} job(s) succeeded, ${summary.cost_usd:.2f} billed"
    logger.info("%s; report %s", message, summary.report_path)
    return final_state(summary, message, fail_on_job_failure=params.fail_run_on_job_failure)


def _stopping(signum: int, logger: Logger) -> None:
    logger.warning(
        "%s received: cancelling this run's requests at fal and writing the report of what finished "
        "(a second one stops at once)",
        signal_name(signum),
    )
    events.run_notice(events.RunNotice(signum=signum))


async def estimated_rows(run: RunResources) -> list[JobRecord | None]:
    """Each row with its job key and estimate once preprocessed (None: still being prepared when the estimate
    was due, `estimate_wait_s`)."""
    seen = await run.intake.settled(run.params.estimate_wait_s if run.sending else None)
    return [run.price.estimated(with_job_key(job, run.params.endpoint)) if job else None for job in seen]


async def edit_or_report_stop(run: RunResources, started: datetime) -> list[JobRecord]:
    """Every job at fal; a run stopped midway (signal, UI cancel) reports what finished before it stops."""
    sheet = list(run.jobs)  # each row as far as it got, for the report of a run stopped midway
    try:
        return await edit_all(run, sheet)
    except BaseException:  # cancelled (UI, API, worker), interrupted: report what finished, then stop
        ledger, run_id = run.ledger, run.run_id
        stopped = [as_stopped(j, ledger.get(j.job_key) if j.job_key else None, run_id) for j in sheet]
        label = run.sending.fal.label if run.sending else run.kind.value
        await asyncio.shield(report_stopped(stopped, run, _about(run.params, run_id, started, label)))
        raise


def deployed() -> bool:
    """Whether this run (or its parent run) comes from a deployment, i.e. a worker runs it."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id) or bool(
        flow_run.get_parent_deployment_id()
    )


def input_policy(params: EditParams) -> InputPolicy:
    """What the run may read (klingflow.inputs): anything from the command line; a deployment's run (or its
    subflow's) is confined to the manifest's folder and public hosts unless its parameters say otherwise."""
    folder = Path(params.manifest).expanduser().resolve().parent if deployed() else None
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


async def report_stopped(jobs: list[JobRecord], run: RunResources, about: dict[str, Any]) -> None:
    """The report of a run stopped midway: the rows that finished, the rest `cancelled` saying where their money
    stands. Written in the report task's own code, not as a new task run, and bounded in time: the worker kills
    a cancelled run's process after its grace period, and stopping must not wait on a slow page."""
    logger = get_run_logger()
    try:
        paths = await asyncio.wait_for(report.fn(jobs, **about, link=run.link), STOPPED_REPORT_S)
    except Exception:  # the ledger keeps every bill: the next run reports what this one could not
        logger.warning("the stopped run's report could not be written; the next run reports its bills", exc_info=True)
        return
    _mark_reported(run.ledger, jobs, about["run_id"])
    events.run_notice(events.RunNotice(summary=summarize(about["run_id"], jobs, 0.0, paths)))
    finished = sum(j.status is JobStatus.succeeded for j in jobs)
    logger.warning("run stopped: %d/%d job(s) had finished; report %s", finished, len(jobs), paths.parquet_path)


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


async def edit_all(run: RunResources, sheet: list[JobRecord]) -> list[JobRecord]:
    """Run every job as soon as its inputs are ready, at most `max_concurrency` requests in flight; rows with
    one job key share a request. `sheet` holds each row as far as it got (a stopped run reports it)."""
    sending, params = run.sending, run.params
    assert sending is not None
    await sending.slots.warm(len(run.jobs))
    ctx = RunContext(
        run_id=run.run_id,
        params=params,
        fal=sending.fal,
        ledger=run.ledger,
        budget=Budget(params.max_budget_usd),
        slots=sending.slots,
        uploads=sending.uploads,
        poll=PollSettings(params.poll_interval_s, params.poll_max_interval_s, params.job_timeout_s),
        recent=sending.recent,
        price=run.price,
    )
    return await _edit_each(run.intake, ctx, sheet, run.link)


async def _edit_each(intake: Intake, ctx: RunContext, latest: list[JobRecord], link: PrefectLink) -> list[JobRecord]:
    """Every job once its own row is ready, admitted a few more at a time than the slots allow (an admitted job
    may be a Prefect task run: all of them started at once would keep the server busy while the first
    submissions wait); the first ready row of a job key leads, the rest follow it. `latest` holds each row as
    far as it got: an exception that escapes becomes that row, and a stopped run reports it."""
    progress = await ProgressTracker.start(total=len(intake.jobs), link=link)
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
            progress.advance()  # in the background: a slow or dead Prefect server never holds a job up
            events.job_finished(done)

    try:
        results = await asyncio.gather(*(one(i) for i in range(len(intake.jobs))), return_exceptions=True)
    finally:
        await asyncio.shield(progress.aclose())
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


def final_state(summary: RunSummary, message: str, *, fail_on_job_failure: bool) -> State:
    """The flow run's end (see the module docstring): a partly successful batch is Completed, named by its count."""
    if summary.all_succeeded:
        return Completed(message=message, data=summary)
    if fail_on_job_failure or summary.succeeded == 0:
        return Failed(message=message, data=summary)
    return Completed(name=f"{summary.succeeded}/{summary.jobs} succeeded", message=message, data=summary)
