"""The cap on requests in flight at fal: this run's own cap, and a Prefect global concurrency limit across runs.

A slot is held from submit until the request ends. Two gates, because they cost differently:
- an asyncio semaphore of `size` caps this run (free, instant hand-over from one job to the next);
- the global limit (GCL) caps every run and worker together. Its slots are taken as short leases
  (`LEASE_S`, Prefect's minimum) through the run's one Prefect client, renewed by one task for all of
  them, so a run killed with -9 holds its slots for at most a lease — once the Prefect server's
  services (the lease repossessor) run. A lease a job is done with goes to the next job of this run,
  and back to the limit only after `IDLE_S` without one: Prefect's waiters poll (Retry-After), and a
  release is not instant, so taking a slot again for every job would cost seconds each.

The limit must exist (`ensure_global_limit`): a missing limit is an error, never "unlimited". A run
waiting for the GCL says so every `WAIT_LOG_S` seconds, with the limit and who holds its slots.

Every call goes through the run's `PrefectLink` (klingflow.orchestrator), so none waits out Prefect's
client retries on a dead server: the leases this run already holds keep serving its jobs (one at a time
each, as before), a job that needs a new lease gets SlotError once the server has not answered for
`DOWN_PATIENCE_S` (nothing is sent to fal beyond the cap the run had), and giving the leases back at the
end is concurrent and bounded by `RELEASE_ALL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from klingflow.errors import BackendError
from klingflow.orchestrator import OrchestratorDown, PrefectLink

LEASE_S = 60.0  # Prefect's minimum lease: the longest a dead run's slot stays taken before the server frees it
RENEW_EVERY_S = LEASE_S / 4
WAIT_LOG_S = 30.0
IDLE_S = 3.0  # a lease no job of this run needed for this long goes back to the limit
MAX_RETRY_S = 5.0  # poll a busy limit at least this often (Prefect may suggest up to 30 s)
SERVER_ERROR_PATIENCE_S = 300.0  # a Prefect server answering errors (e.g. SQLite "database is locked") this long
DOWN_PATIENCE_S = 30.0  # a server not answering at all this long: no new request is sent (a restart takes ~15 s)
RELEASE_ALL_S = 15.0  # the run's end gives its leases back within this; an unreleased lease expires by itself


class SlotError(BackendError):
    """No slot of the global concurrency limit could be had (missing limit, Prefect server failing)."""


async def ensure_global_limit(name: str, limit: int) -> int:
    """Create the global concurrency limit if missing; return the limit in force.

    An existing limit is left as it is, never lowered: another run or an operator set it for all workers
    (`klingflow setup` raises it).
    """
    async with get_client() as client:
        try:
            return (await client.read_global_concurrency_limit_by_name(name)).limit
        except ObjectNotFound:
            pass
        try:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it since: its limit holds
            return (await client.read_global_concurrency_limit_by_name(name)).limit
        return limit


class Slots(Protocol):
    """What a job holds around its requests at fal: RequestSlots in a run, LocalSlots without Prefect."""

    def hold(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class LocalSlots:
    """This process's cap only (no global limit, no Prefect server): for code and tests that drive jobs alone."""

    def __init__(self, size: int) -> None:
        self._local = asyncio.Semaphore(size)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._local:
            yield


class RequestSlots:
    """`async with RequestSlots(...) as slots:` for a run, `async with slots.hold():` around one request."""

    def __init__(
        self,
        name: str,
        size: int,
        *,
        holder: UUID | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        link: PrefectLink | None = None,
        wait_log_s: float = WAIT_LOG_S,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        self.name = name
        self.wait_log_s = wait_log_s
        self.max_retry_s = max_retry_s
        self.size = size
        self._holder = ConcurrencyLeaseHolder(type="flow_run", id=holder) if holder else None
        self._log = log or logging.getLogger("klingflow.slots")
        self._link = link or PrefectLink(logger=self._log)
        self._local = asyncio.Semaphore(size)
        self._idle: dict[UUID, asyncio.TimerHandle] = {}  # leases no job holds, each given back when its timer fires
        self._held: set[UUID] = set()
        self._unreleased = 0  # leases the server never heard given back (they expire within LEASE_S)
        self._client: PrefectClient | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        # one slot call at a time: measured on a SQLite server, 20 concurrent acquisitions took 6.7 s
        # (the server's transactions fight for the database lock), 20 in sequence 0.13 s
        self._api = asyncio.Lock()

    # --- run lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> RequestSlots:
        self._client = await get_client().__aenter__()
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew-{self.name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Give every lease back, at once and within RELEASE_ALL_S (shielded: a stopping run must not leave
        slots taken; a lease not given back frees itself within LEASE_S on a server that runs its services)."""
        if self._renewer is not None:
            self._renewer.cancel()
        for timer in self._idle.values():
            timer.cancel()
        self._idle.clear()
        with contextlib.suppress(BaseException):
            await asyncio.shield(asyncio.wait_for(self._release_all(), RELEASE_ALL_S))
        if unreleased := self._unreleased + len(self._held):
            self._log.warning(
                "%d slot lease(s) of %r could not be given back; they free themselves within %.0f s",
                unreleased,
                self.name,
                LEASE_S,
            )
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            self._client = None

    async def warm(self, jobs: int) -> None:
        """Take up to min(jobs, size) leases now, while the Prefect server is quiet: once a run's task runs
        start, their state events keep a SQLite server busy, and the first lease took 2.4 s (measured).
        Stops at the first full answer: slots other runs hold are waited for by the jobs themselves."""
        for _ in range(min(jobs, self.size) - len(self._held)):
            try:
                lease = await self._try_acquire()
            except (_Busy, SlotError, OrchestratorDown, PrefectHTTPStatusError, httpx.HTTPError):
                return  # the jobs ask again, and wait or fail with the reason
            self._held.add(lease)
            self._park(lease)

    async def _release_all(self) -> None:
        await asyncio.gather(*self._releases, return_exceptions=True)
        await asyncio.gather(*(self._release(lease) for lease in list(self._held)), return_exceptions=True)

    @property
    def client(self) -> PrefectClient:
        if self._client is None:
            raise SlotError("request slots are not open (use `async with RequestSlots(...)`)")
        return self._client

    # --- one request ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self._local.acquire()
        try:
            lease = self._take_idle() or await self._acquire()
        except BaseException:
            self._local.release()
            raise
        try:
            yield
        finally:
            self._park(lease)
            self._local.release()

    def _park(self, lease: UUID) -> None:
        """A lease no job holds: the next job takes it, or it goes back to the limit after IDLE_S."""
        self._idle[lease] = asyncio.get_running_loop().call_later(IDLE_S, self._give_back, lease)

    def _take_idle(self) -> UUID | None:
        if not self._idle:
            return None
        lease, timer = self._idle.popitem()
        timer.cancel()
        return lease

    def _give_back(self, lease: UUID) -> None:
        if self._idle.pop(lease, None) is not None:
            self._release_soon(lease)

    async def _acquire(self) -> UUID:
        """One GCL slot as a lease: retried while the limit is full or the server is struggling."""
        started = last_log = time.monotonic()
        failing_since: float | None = None
        while True:
            try:
                lease = await self._try_acquire()
            except _Busy as busy:
                failing_since = None
                if time.monotonic() - last_log >= self.wait_log_s:
                    last_log = time.monotonic()
                    self._log.warning(await self._waiting_note(time.monotonic() - started))
                await asyncio.sleep(min(self.max_retry_s, busy.retry_after_s) * random.uniform(0.5, 1.0))  # noqa: S311
                continue
            except OrchestratorDown as exc:
                down = time.monotonic() - (self._link.down_since or time.monotonic())
                if down > DOWN_PATIENCE_S:
                    raise SlotError(
                        f"klingflow's Prefect server has not answered for {down:.0f} s, so no slot of "
                        f"{self.name!r} could be taken"
                    ) from exc
                await asyncio.sleep(1.0)
                continue
            except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
                if _refused(exc):
                    raise SlotError(f"the Prefect server refused a slot of {self.name!r}: {exc}") from exc
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > SERVER_ERROR_PATIENCE_S:
                    raise SlotError(f"the Prefect server kept failing slot requests for {self.name!r}: {exc}") from exc
                await asyncio.sleep(random.uniform(0.5, 2.0))  # noqa: S311
                continue
            self._held.add(lease)
            return lease

    async def _try_acquire(self) -> UUID:
        try:
            async with self._api:
                response = await self._link.call(
                    lambda: self.client.increment_concurrency_slots_with_lease(
                        names=[self.name], slots=1, mode="concurrency", lease_duration=LEASE_S, holder=self._holder
                    ),
                    "taking a slot",
                )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423:
                raise _Busy(_retry_after(exc.response)) from exc
            raise
        body = response.json()
        if not body.get("limits"):  # Prefect grants a slot of a limit that does not exist: never run unlimited
            async with self._api:
                await self._link.best_effort(
                    lambda: self.client.release_concurrency_slots_with_lease(UUID(body["lease_id"])),
                    "giving a slot back",
                )
            raise SlotError(
                f"the global concurrency limit {self.name!r} does not exist; it must be created first "
                f"(`klingflow setup` or `prefect gcl create {self.name} --limit N`)"
            )
        return UUID(body["lease_id"])

    async def _waiting_note(self, waited_s: float) -> str:
        try:
            limit = await self.client.read_global_concurrency_limit_by_name(self.name)
            state = f"limit {limit.limit}, {limit.active_slots} slot(s) active"
        except Exception:  # noqa: BLE001 - the note is advice; the wait goes on
            state = "its state could not be read"
        return (
            f"waiting {waited_s:.0f} s for a slot of global concurrency limit {self.name!r} ({state}; this run "
            f"holds {len(self._held)}, the others are held by other runs or workers). A run that was killed "
            f"frees its slots within {LEASE_S:.0f} s when the Prefect server runs its services; see "
            f"`prefect gcl inspect {self.name}`"
        )

    # --- leases ---------------------------------------------------------------------------------------
    def _release_soon(self, lease: UUID) -> None:
        task = asyncio.create_task(self._release(lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, lease: UUID) -> None:
        """Give one lease back (a few tries while the server answers); one the server never hears of
        expires on its own within LEASE_S."""
        self._held.discard(lease)
        for attempt in range(3):
            async with self._api:
                given = await self._link.best_effort(
                    lambda: self.client.release_concurrency_slots_with_lease(lease), "giving a slot back"
                )
            if given is not None:
                return
            if self._link.is_down:
                break
            await asyncio.sleep(0.5 * 2**attempt)
        self._unreleased += 1

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            for lease in list(self._held):
                try:
                    async with self._api:
                        await self._link.call(
                            lambda lease=lease: self.client.renew_concurrency_lease(lease, lease_duration=LEASE_S),
                            "renewing a slot lease",
                        )
                except OrchestratorDown:  # said once by the link; the slots held keep their requests going
                    break
                except Exception as exc:  # noqa: BLE001 - the next round tries again, well within the lease
                    self._log.warning("could not renew a slot lease of %r: %s", self.name, exc)


class _Busy(Exception):
    """The limit is full (HTTP 423); try again after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s


def _refused(exc: Exception) -> bool:
    """A 4xx that waiting will not change (e.g. a limit of 0); 408 and 429 are worth waiting out."""
    code = exc.response.status_code if isinstance(exc, PrefectHTTPStatusError) else 0
    return 400 <= code < 500 and code not in (408, 429)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.1, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return 1.0
