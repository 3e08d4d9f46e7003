"""When a flow run is cancelled (Prefect UI, API or worker), cancel its requests still at fal.

In-process cancellation (Ctrl-C, task cancellation, and the SIGTERM a worker sends to cancel a run)
is handled where each job waits (flows/job_lifecycle.py). This hook covers the rest: a process worker
runs it in a separate process after the run's process exited, so it reads the run's requests from
the request ledger and cancels each one that is still `submitted` (one the flow could not cancel
itself, or submitted but not yet waited on). A queued request is then never processed nor billed;
what was already billed stays in the ledger and the report of any later run that resumes it, and the
hook logs both to the run's logs (the UI) since nothing else reports on a cancelled run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import fal_client
import httpx
from prefect.logging.loggers import flow_run_logger

from klingflow.fal.backend import choose_backend, open_backend
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.models import EditParams

log = logging.getLogger(__name__)
BILLED_STATES = ("completed", "succeeded")
Logger = logging.Logger | logging.LoggerAdapter


async def cancel_outstanding_requests(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` hook of `edit_videos`."""
    raw = (flow_run.parameters or {}).get("params")
    if raw is None:
        return
    logger = _run_logger(flow, flow_run)
    params = raw if isinstance(raw, EditParams) else EditParams.model_validate(raw)
    kind = choose_backend(params.backend, logger)
    ledger = RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value)
    try:
        run_id = str(flow_run.id)
        mine = [e for e in ledger.entries() if e.run_id == run_id]
        outstanding = [e for e in mine if e.state == "submitted" and e.request_id]
        if outstanding:
            with open_backend(params, logger, kind=kind) as session:
                for entry in outstanding:
                    await _cancel(entry, session.client, params.endpoint, ledger, logger)
        _log_billed(mine, logger)
    finally:
        ledger.close()


async def _cancel(entry: LedgerEntry, client: Any, endpoint: str, ledger: RequestLedger, logger: Logger) -> None:
    try:
        handle = await client.get_handle(endpoint, entry.request_id or "")
        await handle.cancel()
    except (fal_client.FalClientError, httpx.HTTPError) as exc:
        logger.warning("could not cancel request %s of job %s: %s", entry.request_id, entry.job_id, exc)
        return
    ledger.update(entry.job_key, state="cancelled", error="cancelled with the flow run")
    logger.info("cancelled request %s of job %s at fal (not billed)", entry.request_id, entry.job_id)


def _log_billed(entries: list[LedgerEntry], logger: Logger) -> None:
    billed = [e for e in entries if e.state in BILLED_STATES]
    total = sum(e.cost_usd or 0.0 for e in billed)
    detail = ", ".join(f"{e.job_id} ({e.request_id}, ${e.cost_usd or 0.0:.2f})" for e in billed)
    logger.info(
        "cancelled run: %d request(s) already billed, $%.2f%s", len(billed), total, f": {detail}" if detail else ""
    )


def _run_logger(flow: Any, flow_run: Any) -> Logger:
    """The run's logger (messages reach the run's logs in the UI); the hook runs outside the run's context."""
    try:
        return flow_run_logger(flow_run, flow)
    except Exception:  # noqa: BLE001 - logging must never stop the cancellations
        return log
