"""Report stage as a Prefect task: a thin wrapper over klingflow.report (parquet, HTML, artifacts).

The parquet file is the record of what was paid for, so it is written first and its failure fails the
task; the HTML page and the artifacts are views of it and only log a warning when they fail. File and
video work runs in a worker thread so the flow's event loop keeps serving other jobs' polls.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from klingflow.models import JobRecord
from klingflow.orchestrator import OrchestratorDown, PrefectLink
from klingflow.report.artifacts import ReportPaths, publish_artifacts, write_files
from klingflow.report.writer import RunInfo, records_to_table

ARTIFACTS_S = 30.0  # four artifacts, one with thumbnails: seconds on a healthy server


@task(name="report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
async def report(
    records: list[JobRecord],
    *,
    run_id: str,
    run_started_at: datetime,
    backend: str,
    endpoint: str,
    report_dir: str,
    manifest: str | None = None,
    run_name: str | None = None,
    link: PrefectLink | None = None,
) -> ReportPaths:
    """Write the run's parquet file and HTML page and publish the table/summary/link/UI-report artifacts.

    The run is named by `run_name` (the user's --name) or else the Prefect flow run's name, so a report row
    says which batch it came from; the manifest is recorded with its sha256 (read here, once per run).
    The artifacts go through the run's `link` to its Prefect server: bounded, and skipped when it is down.
    """
    logger = get_run_logger()
    run = await asyncio.to_thread(RunInfo.of, manifest, run_name or flow_run.get_name())
    table = records_to_table(
        records, run_id=run_id, run_started_at=run_started_at, backend=backend, endpoint=endpoint, run=run
    )
    parquet, html, df, summary = await asyncio.to_thread(write_files, table, Path(report_dir), run_id)
    logger.info("report: %s%s", parquet, f", {html}" if html else " (no HTML page)")
    link = link or PrefectLink(logger=logger)
    try:
        await link.call(
            lambda: publish_artifacts(df, summary, run_id=run_id, parquet=parquet, html=html),
            "publishing the report artifacts",
            timeout_s=ARTIFACTS_S,
        )
    except OrchestratorDown:
        logger.warning("the report artifacts were not published (no Prefect server); the report is %s", parquet)
    except Exception:  # artifacts are a view; the files above are the record
        logger.warning("could not create the report artifacts", exc_info=True)
    return ReportPaths(parquet_path=parquet, html_path=html, totals=summary.totals)
