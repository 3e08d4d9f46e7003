"""Request slots: lanes over a Prefect global concurrency limit (strict, created if missing)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from klingflow.fal.slots import RequestSlots, ensure_global_limit

pytestmark = pytest.mark.usefixtures("prefect_server")


async def test_limit_is_created_once_and_then_left_alone() -> None:
    """A missing limit is created with the run's size; an existing one keeps its own."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    assert await ensure_global_limit(name, 3) == 3
    assert await ensure_global_limit(name, 7) == 3


async def test_never_more_than_size_at_once_and_every_job_runs() -> None:
    """Ten jobs through two slots: at most two hold a slot at any moment, all ten run."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    await ensure_global_limit(name, 2)
    slots = RequestSlots(name, 2)
    active, peak, ran = 0, 0, 0

    async def job() -> None:
        nonlocal active, peak, ran
        async with slots.hold():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            ran += 1

    await asyncio.gather(*(job() for _ in range(10)))
    assert peak <= 2  # 2 when the second slot is granted in time; Prefect may delay it (never exceed it)
    assert ran == 10


async def test_missing_limit_fails_the_waiting_jobs() -> None:
    """strict=True: without the limit, jobs get an error instead of running unlimited."""
    slots = RequestSlots(f"missing-{uuid.uuid4().hex[:8]}", 2)

    async def job() -> None:
        async with slots.hold():
            pytest.fail("ran without a concurrency limit")

    results = await asyncio.gather(*(job() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert "must be created" in str(results[0])


async def test_a_cancelled_waiter_does_not_block_the_lane() -> None:
    """A job cancelled while waiting for a slot is skipped; the next one still runs."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    await ensure_global_limit(name, 1)
    slots = RequestSlots(name, 1)
    order: list[str] = []

    async def job(label: str, hold_s: float) -> None:
        async with slots.hold():
            order.append(label)
            await asyncio.sleep(hold_s)

    first = asyncio.create_task(job("first", 0.2))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(job("doomed", 0))
    last = asyncio.create_task(job("last", 0))
    await asyncio.sleep(0.05)
    doomed.cancel()
    await asyncio.gather(first, last)
    assert order == ["first", "last"]
