"""When a flow run is cancelled (Prefect UI, API or worker), cancel its requests still at fal.

In-process cancellation (Ctrl-C, task cancellation, and the SIGTERM a worker sends to cancel a run)
is handled where each job waits (klingflow.pipeline.job). This hook covers the rest: a process worker
runs it in a separate process after the run's process exited, so it reads the run's requests from
the request ledger and asks fal to cancel each one still `submitted`. The entry becomes
`cancel_requested`, not `cancelled`: fal may still complete a running request (and bill it), so the
next run resumes it and records what fal finally says. What was already billed is logged to the run's
logs (the UI). The flow writes the report of what finished when Prefect tells it it is cancelled; when
Prefect could not (the runner's cancel intent went unacknowledged and the process was killed), this hook
writes it from the manifest and the ledger, so a cancelled run always has its report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.logging.loggers import flow_run_logger

from klingflow.errors import FalError, KlingflowError
from klingflow.fal.api import FalApi
from klingflow.fal.backend import choose_backend, resolve_fal_key
from klingflow.fal.outcomes import Done, Failure, Output, Result
from klingflow.fal.pricing import UnitPrice, resolve_price
from klingflow.ledger.decide import JobState
from klingflow.ledger.meaning import CancelReason, billed
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.manifest import load_manifest
from klingflow.models import Backend, EditParams
from klingflow.pipeline.backend import open_backend
from klingflow.pipeline.job import bill_fields
from klingflow.pipeline.rows import as_stopped
from klingflow.report.artifacts import write_files
from klingflow.report.writer import RunInfo, records_to_table, run_file_name

log = logging.getLogger(__name__)
CONFIRM_WAIT_S = 15.0
Logger = logging.Logger | logging.LoggerAdapter


async def cancel_outstanding_requests(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` hook of `edit_videos`."""
    raw = (flow_run.parameters or {}).get("params")
    if raw is None:
        return
    logger = _run_logger(flow, flow_run)
    params = raw if isinstance(raw, EditParams) else EditParams.model_validate(raw)
    key = resolve_fal_key(logger)
    kind = choose_backend(params.backend, key, logger)
    with RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value) as ledger:
        run_id = str(flow_run.id)
        at_fal = [
            e
            for e in ledger.entries()
            if e.run_id == run_id and e.request_id and e.state in (JobState.submitted, JobState.cancel_requested)
        ]
        if at_fal:
            async with open_backend(params, kind, key, logger) as fal:
                price = await resolve_price(fal, Path(params.state_dir).expanduser() / "pricing", logger)
                for entry in at_fal:
                    await _cancel(entry, fal, ledger, price, logger)
        mine = [e for e in ledger.entries() if e.run_id == run_id]
        _log_billed(mine, logger)
        _report_if_missing(params, flow_run, kind, mine, ledger, logger)


def _report_if_missing(
    params: EditParams, flow_run: Any, kind: Backend, mine: list[LedgerEntry], ledger: RequestLedger, logger: Logger
) -> None:
    """The stopped run's report from its manifest rows and ledger entries, unless the flow wrote it."""
    run_id = str(flow_run.id)
    if (Path(params.report_dir) / run_file_name(run_id)).exists():
        return
    try:
        rows = load_manifest(params.manifest, logger=None)  # rows only: nothing is opened or fetched
    except KlingflowError:
        rows = []
    by_job = {e.job_id: e for e in mine}
    jobs = [as_stopped(row, by_job.get(row.job_id), run_id) for row in rows]
    billed = [by_job[j.job_id] for j in jobs if j.cost_usd and j.job_id in by_job]
    for entry in billed:  # the dead run's bills: this report carries them (mark_reported clears only its own)
        if entry.report_pending and ledger.carries_bill(entry):
            ledger.write(entry, bill_owner=ledger.owner(run_id, ledger.lease_s))
    started = flow_run.start_time or datetime.now(UTC)
    run = RunInfo.of(params.manifest, params.run_name or flow_run.name)
    try:
        table = records_to_table(
            jobs, run_id=run_id, run_started_at=started, backend=kind.value, endpoint=params.endpoint, run=run
        )
        parquet, *_ = write_files(table, Path(params.report_dir), run_id)
    except Exception:  # the ledger keeps every bill: the next run reports what this could not
        logger.warning("the cancelled run's report could not be written", exc_info=True)
        return
    ledger.mark_reported([j.job_key for j in jobs if j.job_key and j.cost_usd], run_id)
    logger.info("cancelled run: report %s (from the manifest and the request ledger)", parquet)


async def _cancel(entry: LedgerEntry, fal: FalApi, ledger: RequestLedger, price: UnitPrice, logger: Logger) -> None:
    """Cancel (unless fal already acknowledged the run's cancel) and record what fal answers; unconfirmed
    stays resumable."""
    asked_here = entry.state is JobState.submitted or entry.cancel_requested_at is None
    try:
        if asked_here:
            await fal.cancel(entry.request_id or "")
            reason = entry.cancel_reason if entry.state is JobState.cancel_requested else None  # the run's own
            entry = ledger.write(
                entry,
                state=JobState.cancel_requested,
                cancel_requested_at=time.time(),
                cancel_reason=reason or CancelReason.run_cancelled,
            )
        result = await _result_when_done(fal, entry.request_id or "")
    except FalError as exc:
        logger.warning(
            "could not cancel request %s of job %s (%s); the next run resumes it", entry.request_id, entry.job_id, exc
        )
        return
    if isinstance(result, Failure) and result.cancelled:
        ledger.write(entry, state=JobState.cancelled, error="cancelled with the flow run", fal_status=result.status)
        logger.info(
            "%s request %s of job %s at fal (not billed)",
            "cancelled" if asked_here else "confirmed the cancel of",
            entry.request_id,
            entry.job_id,
        )
    elif isinstance(result, Output):
        ledger.write(
            entry,
            state=JobState.completed,
            output_url=result.video_url,
            report_pending=True,
            **bill_fields(result.billable_units, None, price),
        )
        logger.warning(
            "request %s of job %s completed before the cancel took effect; it is billed and the next run collects it",
            entry.request_id,
            entry.job_id,
        )
    else:
        logger.info(
            "asked fal to cancel request %s of job %s; fal has not confirmed yet: the next run resumes it",
            entry.request_id,
            entry.job_id,
        )


async def _result_when_done(fal: FalApi, request_id: str, wait_s: float = CONFIRM_WAIT_S) -> Result | None:
    """The request's result once fal says it is done (None if it is not done within `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while not isinstance(await fal.status(request_id, logs=False), Done):
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.5)
    return await fal.result(request_id)


def _log_billed(entries: list[LedgerEntry], logger: Logger) -> None:
    paid = [e for e in entries if billed(e.state)]
    total = sum(e.cost_usd or 0.0 for e in paid)
    detail = ", ".join(f"{e.job_id} ({e.request_id}, ${e.cost_usd or 0.0:.2f})" for e in paid)
    logger.info(
        "cancelled run: %d request(s) already billed, $%.2f%s", len(paid), total, f": {detail}" if detail else ""
    )


def _run_logger(flow: Any, flow_run: Any) -> Logger:
    """The run's logger (messages reach the run's logs in the UI); the hook runs outside the run's context."""
    try:
        return flow_run_logger(flow_run, flow)
    except Exception:  # noqa: BLE001 - logging must never stop the cancellations
        return log
