"""Two state dirs on one fal key (two laptops, no shared database): what a run can see of the other one.

fal has no idempotency key and no claim: the only shared truth is fal's request history, which lists a
request once it has started (klingflow.fal.history). So a run
- reads that history again right before each new submit and adopts a request that already does the job
  (`RecentRequests.before_submit`, called from the job's submit step);
- notices another run on the key (listed requests of the last 24 h its ledger does not know: another laptop
  that used the key yesterday shows before anything is spent) and then warns, once, that no shared ledger
  is configured and how to set one, and waits a short jitter before its first submit so that the other
  run's requests can start and be listed;
- takes its jobs from the end of the manifest when it is the later of the two (`Admission`), so the two runs
  meet once in the middle instead of racing for every job; there the later run leaves the rows just ahead of
  the other one to it and adopts them once listed.

What stays: two runs that submit the same job before fal lists either (both queued, or within the history's
lag) both pay. A shared ledger closes that window: KLINGFLOW_DATABASE_URL=postgresql+psycopg://… (or one shared
--state-dir), with which the other run's requests are known and nothing here warns. `klingflow reconcile`
names every job paid twice (klingflow.report.reconcile.duplicates).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from klingflow.fal.history import ADOPTION_WINDOW, RecentRequests
from klingflow.fal.queue import FalQueue
from klingflow.ledger.schema import DATABASE_URL_ENV
from klingflow.ledger.store import RequestLedger

__all__ = ["Admission", "no_shared_ledger", "watched_history"]


def no_shared_ledger(ledger: RequestLedger, why: str, *, before_first_submit: bool) -> str:
    """The warning of a run that sees another run on its key while its ledger is only its own."""
    when = "before this run's first submit" if before_first_submit else "while this run was submitting"
    return (
        f"another klingflow (or another client) is using this fal key, seen {when}: {why}. "
        f"No shared request ledger is configured for this key (this run's is {ledger.where}), so a job both runs "
        "submit before fal lists either one is paid twice. Share one: set "
        f"{DATABASE_URL_ENV}=postgresql+psycopg://user:password@host/db on every machine, or run both with one shared "
        "--state-dir; `klingflow reconcile` names any job paid twice"
    )


def watched_history(
    fal: FalQueue,
    ledger: RequestLedger,
    logger: logging.Logger | logging.LoggerAdapter,
    *,
    start_margin_s: float,
    contest_rows: int,
) -> RecentRequests:
    """The run's RecentRequests, told which requests this ledger knows and warning (once) when another run
    shows up on the key. A ledger shared with the other run (PostgreSQL) knows its requests: no warning."""
    since = time.time() - ADOPTION_WINDOW.total_seconds() - 3600.0  # the ledger's requests of the window, and then some

    def known() -> set[str]:
        return ledger.request_ids(since)

    def on_peer(before_first_submit: bool) -> None:
        why = recent.peer or "requests this run's ledger does not know"
        if ledger.is_sqlite:
            logger.warning(no_shared_ledger(ledger, why, before_first_submit=before_first_submit))
        else:
            logger.info("another client is using this fal key (%s); the shared ledger %s", why, ledger.where)

    recent = RecentRequests(
        fal, logger, start_margin_s=start_margin_s, known_ids=known, on_peer=on_peer, contest_rows=contest_rows
    )
    return recent


class Admission:
    """At most `limit` jobs in progress; a waiting job is let in by the run's order: the manifest's, or from its
    end when `reverse()` says this run is the later of two on one key."""

    def __init__(self, limit: int, reverse: Callable[[], bool] = lambda: False) -> None:
        self._free = limit
        self._reverse = reverse
        self._waiting: dict[int, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def turn(self, index: int) -> AsyncIterator[None]:
        """Hold one place while job `index` is in progress."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            admitted = asyncio.get_running_loop().create_future()
            self._waiting[index] = admitted
            try:
                await admitted
            except BaseException:
                if self._waiting.pop(index, None) is None and admitted.done() and not admitted.cancelled():
                    self._release()  # let in just as it was cancelled: pass the place on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if not self._waiting:
            self._free += 1
            return
        index = max(self._waiting) if self._reverse() else min(self._waiting)
        self._waiting.pop(index).set_result(None)
