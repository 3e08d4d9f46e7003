"""The cap on requests in flight at fal: a Prefect global concurrency limit, held in lanes.

The global limit (GCL) holds across workers and flow runs; it is created if missing and always
used with strict=True (Prefect's default silently runs unlimited when the limit does not exist).

A slot is held from submit until the request ends. Releasing a slot and acquiring it again for
the next job costs seconds here: Prefect's waiters back off (Retry-After) and a release is not
seen at once (measured: 6 one-second jobs through 2 slots took 5.2-7.1 s instead of 3 s). So this
run holds its slots in *lanes*: each lane acquires one GCL slot through Prefect's public
`concurrency()` and hands it from one job to the next while jobs are waiting, releasing it only
when it runs out of work. The cap is unchanged (one request per lane, one lane per slot).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectNotFound


async def ensure_global_limit(name: str, limit: int) -> int:
    """Create the global concurrency limit if missing; return the limit in force.

    An existing limit is left as it is (another run or an operator set it for all workers).
    """
    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return limit
        return existing.limit


class _Ticket:
    """One job waiting for a slot: `go` resolves when a lane has one for it, `done` when it is finished."""

    def __init__(self) -> None:
        self.go: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done = asyncio.Event()


class RequestSlots:
    """`async with slots.hold():` around the life of one request at fal; at most `size` at once."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        # Lanes run in the context the slots were made in (the flow's), never a task run's: a slot held
        # for a task run would be tied to that task run, and outlive-or-end with it rather than the lane.
        self._context = contextvars.copy_context()
        self._queue: deque[_Ticket] = deque()
        self._lanes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        ticket = _Ticket()
        self._queue.append(ticket)
        if self._lanes < self.size:
            self._lanes += 1
            task = asyncio.create_task(self._lane(), context=self._context.copy())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await ticket.go
            yield
        finally:
            ticket.done.set()

    async def _lane(self) -> None:
        """Hold one GCL slot and serve waiting tickets one after another until none is left."""
        counted = True
        try:
            async with concurrency(self.name, occupy=1, strict=True):
                while True:
                    ticket = self._next_ticket()
                    if ticket is None:
                        self._lanes -= 1  # before the release awaits: a new job now starts a new lane
                        counted = False
                        return
                    ticket.go.set_result(None)
                    await ticket.done.wait()
        except Exception as exc:  # noqa: BLE001 - e.g. the limit vanished: the waiting jobs get the error
            while (ticket := self._next_ticket()) is not None:
                ticket.go.set_exception(exc)
        finally:
            if counted:
                self._lanes -= 1

    def _next_ticket(self) -> _Ticket | None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.go.done():  # skip jobs cancelled while waiting
                return ticket
        return None
