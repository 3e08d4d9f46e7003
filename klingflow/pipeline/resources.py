"""A run's resources, opened in one place and closed in the right order: the composition root of a run.

`open_run` opens the request ledger, reads the manifest, starts preprocessing, connects to fal (or the
simulator; nothing for a dry run), starts reading fal's request history, resolves the price, and — for a run
that sends work — takes the run's request slots and upload cache. The flow body then keeps only the stages.
Closing is ordered for money: the flow writes its report inside the block, so what was paid is on disk before
any cleanup that needs klingflow's own services (slot leases go back to Prefect last, bounded; the ledger,
the one record that must survive, closes after everything that writes to it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from klingflow.fal.backend import choose_backend, key_for, resolve_fal_key
from klingflow.fal.history import RecentRequests
from klingflow.fal.pricing import UnitPrice, dry_run_price, resolve_price
from klingflow.fal.queue import FalQueue
from klingflow.fal.slots import RequestSlots, ensure_global_limit
from klingflow.fal.uploads import UploadCache
from klingflow.inputs import InputPolicy
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import Backend, EditParams, JobRecord
from klingflow.orchestrator import PrefectLink
from klingflow.pipeline.backend import open_backend, target_namespace
from klingflow.pipeline.intake import Intake
from klingflow.pipeline.peers import watched_history

Logger = logging.Logger | logging.LoggerAdapter
ADMIT_PER_SLOT = 2  # jobs in progress per request slot: one at fal, one uploading or downloading


@dataclass
class Sending:
    """What a run that sends work to fal holds besides the connection: its slots and its upload cache."""

    fal: FalQueue
    recent: RecentRequests
    slots: RequestSlots
    uploads: UploadCache


@dataclass
class RunResources:
    """Everything a run works with; `sending` is None for a dry run (which sends fal nothing)."""

    run_id: str
    params: EditParams
    kind: Backend
    ledger: RequestLedger
    intake: Intake
    price: UnitPrice
    link: PrefectLink
    sending: Sending | None

    @property
    def jobs(self) -> list[JobRecord]:
        return self.intake.jobs


@asynccontextmanager
async def open_run(
    params: EditParams, run_id: str, inputs: InputPolicy, logger: Logger, *, slot_holder: uuid.UUID | None = None
) -> AsyncIterator[RunResources]:
    """The run's resources for the block (see the module docstring for the order they close in)."""
    key = resolve_fal_key(logger)  # once per run; passed down, never logged
    kind = choose_backend(params.backend, key, logger)
    state = Path(params.state_dir).expanduser()
    link = PrefectLink(logger=logger)
    async with AsyncExitStack() as stack:
        ledger = stack.enter_context(RequestLedger(state / "requests", namespace=kind.value))
        logger.info("request ledger: %s", ledger.where)  # password hidden
        jobs = load_manifest(params.manifest, logger, inputs)
        logger.info("manifest %s: %d job(s)", params.manifest, len(jobs))
        intake = await stack.enter_async_context(Intake(jobs, PreprocessSettings.from_params(params, inputs), logger))
        if params.dry_run:
            sent_key = key_for(kind, key) if key or kind is not Backend.fal else None
            price = dry_run_price(state / "pricing", target_namespace(kind), params.endpoint, sent_key, logger)
            yield RunResources(run_id, params, kind, ledger, intake, price, link, None)
            return
        fal = await stack.enter_async_context(open_backend(params, kind, key, logger))
        # read while inputs are prepared; read again before each new submit (another machine on this key)
        ahead = ADMIT_PER_SLOT * params.max_concurrency + 2  # rows another run may have sent that fal does not list
        recent = watched_history(fal, ledger, logger, start_margin_s=params.job_timeout_s, contest_rows=ahead)
        recent.expect(intake.jobs).prefetch()
        price = await resolve_price(fal, state / "pricing", logger)
        limit = await ensure_global_limit(params.concurrency_limit, params.max_concurrency)
        logger.info("global concurrency limit %r: %d request(s) in flight", params.concurrency_limit, limit)
        slots = RequestSlots(
            params.concurrency_limit, params.max_concurrency, holder=slot_holder, log=logger, link=link
        )
        await stack.enter_async_context(slots)  # given back after the report (it exits before the ledger closes)
        uploads = stack.enter_context(UploadCache(state / "uploads", fal))
        yield RunResources(run_id, params, kind, ledger, intake, price, link, Sending(fal, recent, slots, uploads))
