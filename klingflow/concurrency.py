"""The cap on requests in flight at fal: a Prefect global concurrency limit plus an in-process gate.

The global limit (GCL) holds across workers and flow runs; it is created if missing and always
used with strict=True (Prefect's default silently runs unlimited when the limit does not exist).
A slot is held from submit until the request ends. Prefect's waiters poll for free slots, which
stretches the makespan, so an asyncio semaphore of the same size queues this run's jobs in-process
and only jobs that can start right away ask the GCL.
"""

from __future__ import annotations

import asyncio
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


class RequestSlots:
    """`async with slots.hold():` around the life of one request at fal."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self._local = asyncio.Semaphore(size)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._local, concurrency(self.name, occupy=1, strict=True):
            yield
