"""The `edit_videos` flow: manifest → preprocess → estimate → edit (upload, submit, collect, download) → report.

Each job moves through the stages on its own (tasks/edit.py, klingflow.pipeline.job); a failing job
becomes a report row with its error and never stops the others. The flow ends Failed when any job did
not succeed (or was skipped by the budget), Completed otherwise.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, unmapped
from prefect.artifacts import acreate_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from klingflow import events
from klingflow.endpoint import PRICE_PER_SECOND_USD
from klingflow.fal.backend import choose_backend, resolve_fal_key
from klingflow.fal.history import RecentRequests
from klingflow.fal.queue import FalQueue
from klingflow.fal.slots import RequestSlots, ensure_global_limit
from klingflow.fal.uploads import UploadCache
from klingflow.ledger.budget import Budget
from klingflow.ledger.decide import JobState
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import EditParams, JobRecord, JobStatus
from klingflow.pipeline.backend import open_backend
from klingflow.pipeline.cancellation import cancel_outstanding_requests
from klingflow.pipeline.job import PollSettings, RunContext
from klingflow.pipeline.rows import as_follower, as_row
from klingflow.report.artifacts import ProgressTracker, ReportPaths
from tasks.edit import edit
from tasks.preprocess import preprocess
from tasks.report import report


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


@flow(
    name="edit_videos",
    task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2),
    on_cancellation=[cancel_outstanding_requests],
)
async def edit_videos(params: EditParams) -> State:
    """Run every edit of a manifest through Kling O3 Pro (or the local simulator) and report."""
    logger = get_run_logger()
    run_id, started = str(flow_run.get_id() or uuid.uuid4()), datetime.now(UTC)
    key = resolve_fal_key(logger)  # once per run; passed down, never logged
    kind = choose_backend(params.backend, key, logger)
    with RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value) as ledger:
        jobs = load_manifest(params.manifest)
        logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
        jobs = await preprocess_all(jobs, PreprocessSettings.from_params(params))
        jobs = [with_job_key(job, params.endpoint) for job in jobs]
        estimated = await announce_estimate(jobs, ledger, params)
        if params.dry_run:
            jobs = [j.with_(status=JobStatus.dry_run) if j.ok else j for j in jobs]
            backend = f"{kind.value} (dry run)"
        else:
            async with open_backend(params, kind, key, logger) as fal:
                jobs = await edit_all(jobs, fal, ledger, run_id, params)
                backend = fal.label
        paths = await report(
            jobs,
            run_id=run_id,
            run_started_at=started,
            backend=backend,
            endpoint=params.endpoint,
            report_dir=params.report_dir,
        )
        ledger.mark_reported([j.job_key for j in jobs if j.job_key and j.cost_usd and not j.reused], run_id)
    summary = summarize(run_id, jobs, estimated, paths)
    message = f"{summary.succeeded}/{summary.jobs} job(s) succeeded, ${summary.cost_usd:.2f} billed"
    logger.info("%s; report %s", message, summary.report_path)
    return Completed(message=message, data=summary) if summary.all_succeeded else Failed(message=message, data=summary)


async def preprocess_all(jobs: list[JobRecord], settings: PreprocessSettings) -> list[JobRecord]:
    """Preprocess every job in the flow's thread pool (CPU-bound PyAV work, one thread per core)."""
    futures = preprocess.map(jobs, settings=unmapped(settings))
    return await asyncio.to_thread(lambda: [f.result() for f in futures])


async def announce_estimate(jobs: list[JobRecord], ledger: RequestLedger, params: EditParams) -> float:
    """Say what the run will cost before anything is uploaded (results already paid for cost nothing)."""
    ready = [j for j in jobs if j.ok]
    keys = {j.job_key for j in ready}
    paid = set() if params.force else {k for k in keys if _paid(ledger, k)}
    to_pay = {j.job_key: j for j in ready if j.job_key not in paid}  # identical rows are paid once
    seconds = sum(j.estimated_seconds or 0 for j in to_pay.values())
    total = round(sum(j.estimated_cost_usd or 0.0 for j in to_pay.values()), 4)
    cap = "no cap" if params.max_budget_usd is None else f"cap ${params.max_budget_usd:.2f}"
    text = (
        f"estimate: {len(to_pay)} job(s) to pay for ({len(paid)} already paid, {len(ready) - len(keys)} identical "
        f"to another row, {len(jobs) - len(ready)} failed before submission), {seconds} output second(s), "
        f"${total:.2f} ({cap})"
    )
    get_run_logger().info(text)
    await acreate_markdown_artifact(
        key="klingflow-estimate",
        markdown=f"## Cost estimate\n\n{text}\n\nPrice: ${PRICE_PER_SECOND_USD} per generated second.",
        description="Estimated cost before anything was uploaded",
    )
    return total


def _paid(ledger: RequestLedger, job_key: str | None) -> bool:
    entry = ledger.get(job_key) if job_key else None
    return entry is not None and entry.state is JobState.succeeded


async def edit_all(
    jobs: list[JobRecord], fal: FalQueue, ledger: RequestLedger, run_id: str, params: EditParams
) -> list[JobRecord]:
    """Run every ready job, at most `max_concurrency` requests in flight; rows with one job key share a request."""
    limit = await ensure_global_limit(params.concurrency_limit, params.max_concurrency)
    get_run_logger().info("global concurrency limit %r: %d request(s) in flight", params.concurrency_limit, limit)
    progress = ProgressTracker(total=len(jobs))
    with UploadCache(Path(params.state_dir).expanduser() / "uploads", fal) as uploads:
        ctx = RunContext(
            run_id=run_id,
            params=params,
            fal=fal,
            ledger=ledger,
            budget=Budget(params.max_budget_usd),
            slots=RequestSlots(params.concurrency_limit, params.max_concurrency),
            uploads=uploads,
            poll=PollSettings(params.poll_interval_s, params.poll_max_interval_s, params.job_timeout_s),
            recent=RecentRequests(fal, get_run_logger()),
        )
        leaders: dict[str, asyncio.Future[JobRecord]] = {}

        async def one(job: JobRecord) -> JobRecord:
            done = job
            try:
                if job.ok and job.job_key in leaders:
                    done = as_follower(job, await asyncio.shield(leaders[job.job_key]))
                elif job.ok and job.job_key:
                    leaders[job.job_key] = result = asyncio.get_running_loop().create_future()
                    try:  # the leader runs in this task, so a cancelled run waits for its cancels at fal
                        done = await edit(job, ctx)
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

        results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    return [as_row(job, result) for job, result in zip(jobs, results, strict=True)]


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
