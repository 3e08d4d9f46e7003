"""Edit stage as a Prefect task: one job at fal (upload → submit → collect → download), one task run per job
in runs of at most `job_task_runs_max` jobs (the flow calls `edit.fn` for bigger runs and for reused jobs).

A thin wrapper over klingflow.pipeline.job.run_job, which drives the job's state machine. Never retried
by Prefect: every retry that is safe (uploads, reads, downloads) happens inside, and a blind retry of
the whole job could pay twice. Runs named by job id, so the run's timeline reads.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from klingflow.models import JobRecord
from klingflow.pipeline.job import RunContext, run_job


@task(name="edit", task_run_name="edit-{job.job_id}", cache_policy=NO_CACHE, retries=0)
async def edit(job: JobRecord, ctx: RunContext) -> JobRecord:
    """Prefect task: the whole life of one job at fal; its failure is its row, never an exception."""
    logger = get_run_logger()
    result = await run_job(job, replace(ctx, log=logger))
    if result.error and result.error != job.error:
        logger.error("%s", result.error)
    return result
