"""The `edit_videos` flow: manifest → preprocess → estimate → upload → submit → collect → report.

Each job moves through the stages on its own (flows/job_lifecycle.py); a failing job becomes a
report row with its error and never stops the others. The flow ends Failed when any job did not
succeed (or was skipped by the budget), Completed otherwise.
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
from klingflow.fal.backend import BackendSession, choose_backend, open_backend
from klingflow.fal.slots import RequestSlots, ensure_global_limit
from klingflow.ledger.budget import Budget
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import EditParams, JobRecord
from klingflow.pipeline.cancellation import cancel_outstanding_requests
from klingflow.pipeline.job import RunContext, run_job
from tasks.collect import PollSettings
from tasks.preprocess import preprocess
from tasks.report import ProgressTracker, ReportPaths, report
from tasks.upload import UploadCache


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
    kind = choose_backend(params.backend, logger)
    ledger = RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value)
    try:
        jobs = load_manifest(params.manifest)
        logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
        jobs = await preprocess_all(jobs, PreprocessSettings.from_params(params))
        jobs = [with_job_key(job, params.endpoint) for job in jobs]
        estimated = await announce_estimate(jobs, ledger, params)
        if params.dry_run:
            jobs = [j.model_copy(update={"status": "dry_run"}) if j.ok else j for j in jobs]
            paths = await report(
                jobs,
                run_id=run_id,
                run_started_at=started,
                backend=f"{kind.value} (dry run)",
                endpoint=params.endpoint,
                report_dir=params.report_dir,
            )
        else:
            with open_backend(params, logger, kind=kind) as session:
                jobs = await edit_all(jobs, session, ledger, run_id, params)
                paths = await report(
                    jobs,
                    run_id=run_id,
                    run_started_at=started,
                    backend=session.label,
                    endpoint=params.endpoint,
                    report_dir=params.report_dir,
                )
    finally:
        ledger.close()
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
    paid = set() if params.force else {j.job_key for j in ready if _paid(ledger, j.job_key)}
    to_pay = [j for j in ready if j.job_key not in paid]
    seconds = sum(j.estimated_seconds or 0 for j in to_pay)
    total = round(sum(j.estimated_cost_usd or 0.0 for j in to_pay), 4)
    cap = "no cap" if params.max_budget_usd is None else f"cap ${params.max_budget_usd:.2f}"
    text = (
        f"estimate: {len(to_pay)} job(s) to pay for ({len(paid)} already paid, {len(jobs) - len(ready)} failed "
        f"before submission), {seconds} output second(s), ${total:.2f} ({cap})"
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
    return entry is not None and entry.state == "succeeded"


async def edit_all(
    jobs: list[JobRecord], session: BackendSession, ledger: RequestLedger, run_id: str, params: EditParams
) -> list[JobRecord]:
    """Run every ready job, at most `max_concurrency` requests in flight at fal."""
    limit = await ensure_global_limit(params.concurrency_limit, params.max_concurrency)
    get_run_logger().info("global concurrency limit %r: %d request(s) in flight", params.concurrency_limit, limit)
    state = Path(params.state_dir).expanduser()
    ctx = RunContext(
        run_id=run_id,
        params=params,
        session=session,
        ledger=ledger,
        budget=Budget(params.max_budget_usd),
        slots=RequestSlots(params.concurrency_limit, params.max_concurrency),
        uploads=UploadCache(state / "uploads", session),
        poll=PollSettings(params.poll_interval_s, params.poll_max_interval_s, params.job_timeout_s),
    )
    progress = ProgressTracker(total=len(jobs))

    async def one(job: JobRecord) -> JobRecord:
        done = job
        try:
            done = await run_job(job, ctx)
            return done
        finally:
            progress.advance()
            events.job_finished(done)

    try:
        return list(await asyncio.gather(*(one(job) for job in jobs)))
    finally:
        ctx.uploads.close()


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
        statuses={j.job_id: j.status for j in jobs},
    )
