"""The `edit_videos` flow: manifest → preprocess → upload → submit → collect → report.

Each job moves through the stages on its own; a failing job becomes a report row with its error
and never stops the others. The flow ends Failed when any job did not succeed, Completed otherwise.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, unmapped
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from klingflow import events
from klingflow.backend import BackendSession, open_backend
from klingflow.concurrency import RequestSlots, ensure_global_limit
from klingflow.manifest import load_manifest
from klingflow.models import EditParams, JobRecord
from klingflow.preprocess import PreprocessSettings
from tasks.collect import PollSettings, collect, download
from tasks.preprocess import preprocess
from tasks.report import ProgressTracker, report
from tasks.submit import submit
from tasks.upload import UploadCache, upload


class RunSummary(BaseModel):
    """What a run did, as the CLI and callers see it."""

    run_id: str
    jobs: int
    succeeded: int
    failed: int
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
    validate_parameters=True,
)
async def edit_videos(params: EditParams) -> State:
    """Run every edit of a manifest through Kling O3 Pro (or the local simulator) and report."""
    logger = get_run_logger()
    run_id, started = str(flow_run.get_id() or uuid.uuid4()), datetime.now(UTC)
    jobs = load_manifest(params.manifest)
    logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
    jobs = await preprocess_all(jobs, PreprocessSettings.from_params(params))
    log_estimate(jobs, logger)
    with open_backend(params, logger) as session:
        jobs = await edit_all(jobs, session, params)
        paths = await report(
            jobs,
            run_id=run_id,
            run_started_at=started,
            backend=session.label,
            endpoint=params.endpoint,
            report_dir=params.report_dir,
        )
    summary = summarize(run_id, jobs, paths)
    message = f"{summary.succeeded}/{summary.jobs} job(s) succeeded, ${summary.cost_usd:.2f} billed"
    logger.info("%s; report %s", message, summary.report_path)
    return Completed(message=message, data=summary) if summary.all_succeeded else Failed(message=message, data=summary)


async def preprocess_all(jobs: list[JobRecord], settings: PreprocessSettings) -> list[JobRecord]:
    """Preprocess every job in the flow's thread pool (CPU-bound PyAV work, one thread per core)."""
    futures = preprocess.map(jobs, settings=unmapped(settings))
    return await asyncio.to_thread(lambda: [f.result() for f in futures])


def log_estimate(jobs: list[JobRecord], logger) -> None:  # noqa: ANN001 - Prefect's logger adapter
    """Say what the run will cost before anything is uploaded."""
    ready = [j for j in jobs if j.ok]
    total = sum(j.estimated_cost_usd or 0.0 for j in ready)
    seconds = sum(j.estimated_seconds or 0 for j in ready)
    logger.info("estimate: %d job(s) ready, %d output second(s), $%.2f", len(ready), seconds, total)


async def edit_all(jobs: list[JobRecord], session: BackendSession, params: EditParams) -> list[JobRecord]:
    """Upload, submit and collect every ready job, at most `max_concurrency` requests in flight."""
    limit = await ensure_global_limit(params.concurrency_limit, params.max_concurrency)
    get_run_logger().info("global concurrency limit %r: %d request(s) in flight", params.concurrency_limit, limit)
    slots = RequestSlots(params.concurrency_limit, params.max_concurrency)
    cache = UploadCache(Path(params.state_dir).expanduser() / "uploads", session)
    progress = ProgressTracker(total=len(jobs))
    poll = PollSettings(params.poll_interval_s, params.poll_max_interval_s, params.job_timeout_s)

    async def one(job: JobRecord) -> JobRecord:
        done = job
        try:
            done = await edit_one(job, session, params, slots, cache, poll)
            return done
        finally:
            progress.advance()
            events.job_finished(done)

    try:
        return list(await asyncio.gather(*(one(job) for job in jobs)))
    finally:
        cache.close()


async def edit_one(
    job: JobRecord,
    session: BackendSession,
    params: EditParams,
    slots: RequestSlots,
    cache: UploadCache,
    poll: PollSettings,
) -> JobRecord:
    """One job through upload → submit → collect → download; errors end this job only."""
    if not job.ok:
        return job
    job = await _guarded(job, "upload", upload(job, cache))
    if not job.ok:
        return job
    async with slots.hold():
        job = await _guarded(job, "submit", submit(job, session, params.endpoint))
        job = await _guarded(job, "collect", collect(job, session, params.endpoint, poll))
    return await _guarded(job, "download", download(job, params.output_dir))


async def _guarded(job: JobRecord, stage: str, step: Awaitable[JobRecord]) -> JobRecord:
    """Turn an unexpected exception in a stage into this job's error."""
    try:
        return await step
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the batch
        where = f"row {job.row} ({job.job_id})"
        return job.fail(stage, f"{where}: {stage} failed: {exc.__class__.__name__}: {exc}")


def summarize(run_id: str, jobs: list[JobRecord], paths) -> RunSummary:  # noqa: ANN001 - tasks.report.ReportPaths
    succeeded = sum(j.status == "succeeded" for j in jobs)
    return RunSummary(
        run_id=run_id,
        jobs=len(jobs),
        succeeded=succeeded,
        failed=sum(j.status not in ("succeeded", "dry_run") for j in jobs),
        cost_usd=round(sum(j.cost_usd or 0.0 for j in jobs if not j.reused), 4),
        report_path=str(getattr(paths, "parquet_path", "") or "") or None,
        html_path=str(getattr(paths, "html_path", "") or "") or None,
        statuses={j.job_id: j.status for j in jobs},
    )
