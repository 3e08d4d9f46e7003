"""klingflow's own Prefect server as a dependency that may fail: every call a run makes to it is bounded.

Prefect's client retries a server that does not answer for about a minute per call (2 + 4 + 8 + 16 + 32 s of
backoff); a run that gave back eight slot leases one after the other to a killed server sat in that loop for
minutes before its report. So each call a run makes itself (slot leases, artifacts, progress) goes through one
`PrefectLink`: it is bounded by `timeout_s`, and once one call has gone unanswered the server counts as down —
best-effort calls (artifacts, progress, slot hand-back) are skipped, calls that gate money (a new slot for a
submit) fail at once with `OrchestratorDown`, and one probe call is let through every `recheck_s` to notice the
server back. The fal work a run already has goes on without the server (klingflow.pipeline.job), and the report
is written to disk before any of this cleanup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from klingflow.errors import BackendError

T = TypeVar("T")
CALL_TIMEOUT_S = 15.0  # a healthy local server answers in milliseconds, a busy SQLite one in a few seconds
RECHECK_S = 10.0

log = logging.getLogger(__name__)


class OrchestratorDown(BackendError):
    """klingflow's Prefect server did not answer: nothing that needs it (a new slot, an artifact) happened."""


class PrefectLink:
    """A run's view of its Prefect server: up, or down since when (one per run, shared by its callers)."""

    def __init__(
        self,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        recheck_s: float = RECHECK_S,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.recheck_s = recheck_s
        self.down_since: float | None = None
        self._probe_at = 0.0
        self._log = logger or log

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def _may_call(self) -> bool:
        """Up, or down long enough that one probe may go through."""
        if self.down_since is None:
            return True
        if time.monotonic() >= self._probe_at:
            self._probe_at = time.monotonic() + self.recheck_s
            return True
        return False

    def _mark_down(self, what: str, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._probe_at = self.down_since + self.recheck_s
            reason = "no answer" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
            self._log.warning(
                "klingflow's Prefect server stopped answering (%s, on %s): this run goes on with the request "
                "slots it holds (no new slot is taken), collects what fal has, writes its report without the "
                "server and skips the Prefect artifacts",
                reason,
                what,
            )

    def _mark_up(self) -> None:
        if self.down_since is not None:
            self._log.warning(
                "klingflow's Prefect server answers again after %.0f s", time.monotonic() - self.down_since
            )
            self.down_since = None

    async def call(self, make: Callable[[], Awaitable[T]], what: str, *, timeout_s: float | None = None) -> T:
        """`await make()` within the time bound; OrchestratorDown when the server is (or just went) down.
        An error the server answered with (a 4xx, a 5xx) is raised as it is: the server is up."""
        if not self._may_call():
            raise OrchestratorDown(f"klingflow's Prefect server is not answering (skipped: {what})")
        try:
            result = await asyncio.wait_for(make(), timeout_s or self.timeout_s)
        except (TimeoutError, httpx.TransportError) as exc:
            self._mark_down(what, exc)
            raise OrchestratorDown(f"klingflow's Prefect server did not answer ({what})") from exc
        self._mark_up()
        return result

    async def best_effort(self, make: Callable[[], Awaitable[T]], what: str) -> T | None:
        """A call whose failure changes nothing that was paid for (an artifact, a slot given back): None on
        any failure, said once in the log by `call` when the server is down, at debug level otherwise."""
        try:
            return await self.call(make, what)
        except OrchestratorDown:
            return None
        except Exception:  # noqa: BLE001 - best effort by definition; the report on disk is the record
            self._log.debug("%s failed", what, exc_info=True)
            return None
