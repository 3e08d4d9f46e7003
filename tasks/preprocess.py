"""Preprocess stage as a Prefect task: a thin wrapper over klingflow.media.preprocess.preprocess_job.

No Prefect caching (NO_CACHE): preprocess_job has its own content-hash transcode cache, shared by
every worker through the state dir, and records must not be replayed from a stale result.
No retries: bad input is a failed record, not an exception, and retrying a deterministic
transcode would only repeat it.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.models import JobRecord


@task(name="preprocess", cache_policy=NO_CACHE, task_run_name="preprocess-{record.job_id}")
def preprocess(record: JobRecord, settings: PreprocessSettings) -> JobRecord:
    """Prefect task: validate and normalize one job's inputs (never raises for bad input)."""
    result = preprocess_job(record, settings)
    logger = get_run_logger()
    if result.status == "failed" and record.status != "failed":
        logger.warning("job %s: %s", record.job_id, result.error)
    elif result.ok:
        logger.info(
            "job %s: %s -> %s (%s), %.2f s, est. $%.2f",
            record.job_id,
            record.video,
            result.input_path,
            ", ".join(result.preprocess_actions),
            result.input_duration_s or 0.0,
            result.estimated_cost_usd or 0.0,
        )
    return result
