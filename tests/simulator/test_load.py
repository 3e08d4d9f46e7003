"""Load: the server sustains 200 concurrent fast-copy jobs from the async fal_client."""

from __future__ import annotations

import asyncio

import fal_client
import pytest

from klingflow.endpoint import ENDPOINT_ID
from tests.simulator.conftest import edit_args

JOBS = 200


@pytest.mark.slow
async def test_200_concurrent_fast_copy_jobs(make_sim, aclient: fal_client.AsyncClient, media):
    """200 jobs submitted at once all complete, each billed once, never more than 50 in progress."""
    sim = make_sim(fast_copy=True, time_scale=0.0, concurrency_per_key=50)
    url = await aclient.upload_file(media.silent)

    async def one(i: int) -> dict:
        handle = await aclient.submit(ENDPOINT_ID, edit_args(url, prompt=f"job {i}"))
        return await handle.get()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(JOBS))), timeout=120)
    assert len({r["video"]["url"] for r in results}) == JOBS
    ledger = sim.ledger()
    assert len(ledger) == JOBS and len({e.request_id for e in ledger}) == JOBS
    (key,) = sim.counters()["keys"].values()
    assert key["max_in_progress"] == 50 and key["max_in_flight"] > 50
