"""When a flow run is cancelled (Prefect UI, API or worker), cancel its requests still at fal.

In-process cancellation (Ctrl-C, task cancellation) is handled where each job waits
(flows/job_lifecycle.py). This hook covers the rest: Prefect runs it after the run's process was
stopped, so it reads the run's requests from the request ledger and cancels each one that is still
`submitted`. A queued request is then never processed nor billed; what was already billed stays in
the ledger and the report of any later run that resumes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import fal_client
import httpx

from klingflow.backend import choose_backend, open_backend
from klingflow.models import EditParams
from klingflow.request_ledger import RequestLedger

log = logging.getLogger(__name__)


async def cancel_outstanding_requests(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` hook of `edit_videos`."""
    raw = (flow_run.parameters or {}).get("params")
    if raw is None:
        return
    params = raw if isinstance(raw, EditParams) else EditParams.model_validate(raw)
    kind = choose_backend(params.backend, log)
    ledger = RequestLedger(Path(params.state_dir).expanduser() / "requests", namespace=kind.value)
    try:
        run_id = str(flow_run.id)
        outstanding = [e for e in ledger.entries() if e.run_id == run_id and e.state == "submitted" and e.request_id]
        if not outstanding:
            return
        with open_backend(params, log) as session:
            for entry in outstanding:
                try:
                    handle = await session.client.get_handle(params.endpoint, entry.request_id or "")
                    await handle.cancel()
                except (fal_client.FalClientError, httpx.HTTPError) as exc:
                    log.warning("could not cancel request %s: %s", entry.request_id, exc)
                    continue
                ledger.update(entry.job_key, state="cancelled", error="cancelled with the flow run")
                log.info("cancelled request %s of job %s", entry.request_id, entry.job_id)
    finally:
        ledger.close()
