"""Request slots: this run's cap plus leases of a Prefect global concurrency limit (strict, created if missing)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from prefect.client.orchestration import get_client

from klingflow.fal.slots import RequestSlots, SlotError, ensure_global_limit

pytestmark = pytest.mark.usefixtures("prefect_server")


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def _active(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def test_limit_is_created_once_and_then_left_alone() -> None:
    """A missing limit is created with the run's size; an existing one keeps its own (never lowered)."""
    name = _name()
    assert await ensure_global_limit(name, 3) == 3
    assert await ensure_global_limit(name, 7) == 3
    assert await ensure_global_limit(name, 1) == 3


async def test_runs_creating_the_limit_at_once_all_get_it() -> None:
    """Runs started together all find the limit missing: one creates it, the others take it (no 409)."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    limits = await asyncio.gather(*(ensure_global_limit(name, 3 + n) for n in range(8)))
    assert len(set(limits)) == 1 and limits[0] in range(3, 11)


async def test_never_more_than_size_at_once_and_every_job_runs() -> None:
    """Ten jobs through two slots: at most two hold a slot at any moment, all ten run, and the run's
    exit gives every slot back."""
    name = _name()
    await ensure_global_limit(name, 2)
    active, peak, ran, seen = 0, 0, 0, []

    async def job(slots: RequestSlots) -> None:
        nonlocal active, peak, ran
        async with slots.hold():
            active += 1
            peak = max(peak, active)
            seen.append(await _active(name))
            await asyncio.sleep(0.05)
            active -= 1
            ran += 1

    async with RequestSlots(name, 2) as slots:
        await asyncio.gather(*(job(slots) for _ in range(10)))
    assert peak == 2 and ran == 10
    assert max(seen) <= 2  # the global limit never saw more than its size
    assert await _active(name) == 0


async def test_the_global_limit_caps_two_runs_together() -> None:
    """Two runs of size 2 on a limit of 2: together never more than 2 slots at the server."""
    name = _name()
    await ensure_global_limit(name, 2)
    inside, peak = 0, 0

    async def job(slots: RequestSlots) -> None:
        nonlocal inside, peak
        async with slots.hold():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.1)
            inside -= 1

    async def run() -> None:
        async with RequestSlots(name, 2) as slots:
            await asyncio.gather(*(job(slots) for _ in range(3)))

    await asyncio.gather(run(), run())
    assert peak == 2
    assert await _active(name) == 0


async def test_missing_limit_fails_the_waiting_jobs() -> None:
    """Without the limit, jobs get an error instead of running unlimited, and no slot is left taken."""
    ran = False

    async def job(slots: RequestSlots) -> None:
        nonlocal ran
        async with slots.hold():
            ran = True

    async with RequestSlots(f"missing-{uuid.uuid4().hex[:8]}", 2) as slots:
        results = await asyncio.gather(*(job(slots) for _ in range(3)), return_exceptions=True)
    assert not ran
    assert all(isinstance(r, SlotError) for r in results)
    assert "does not exist" in str(results[0])


async def test_a_cancelled_waiter_does_not_block_the_next() -> None:
    """A job cancelled while waiting for a slot is skipped; the next one still runs."""
    name = _name()
    await ensure_global_limit(name, 1)
    order: list[str] = []

    async def job(slots: RequestSlots, label: str, hold_s: float) -> None:
        async with slots.hold():
            order.append(label)
            await asyncio.sleep(hold_s)

    async with RequestSlots(name, 1) as slots:
        first = asyncio.create_task(job(slots, "first", 0.2))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(job(slots, "doomed", 0))
        last = asyncio.create_task(job(slots, "last", 0))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.gather(first, last)
    assert order == ["first", "last"]


async def test_a_full_limit_is_waited_for_and_said(caplog) -> None:
    """A slot held elsewhere: the run waits (logging the limit and its active slots) and goes on once freed.
    The other holder lets go only once the wait was said, so a slow machine changes nothing."""
    name = _name()
    await ensure_global_limit(name, 1)
    said = asyncio.Event()

    class _Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting" in record.getMessage():
                said.set()

    async with get_client() as client:
        taken = await client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=60
        )
        lease = uuid.UUID(taken.json()["lease_id"])

        async def free_once_said() -> None:
            await said.wait()
            await client.release_concurrency_slots_with_lease(lease)

        freeing = asyncio.create_task(free_once_said())
        logger = logging.getLogger("klingflow.slots")
        handler = _Said()
        logger.addHandler(handler)
        try:
            with caplog.at_level(logging.WARNING, logger="klingflow.slots"):
                async with RequestSlots(name, 1, wait_log_s=0.2, max_retry_s=0.1) as slots, slots.hold():
                    assert freeing.done()  # it could not get in before the other holder let go
        finally:
            logger.removeHandler(handler)
        await freeing
    notes = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert notes and f"{name!r} (limit 1, 1 slot(s) active; this run holds 0" in notes[0]
