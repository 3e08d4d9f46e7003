"""fal's request history as the second source of truth: find a lost submit by its payload, adopt paid work."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from klingflow.fal.history import HISTORY_SLICES, RecentRequests, find_by_payload
from klingflow.fal.outcomes import Done
from klingflow.fal.queue import FalQueue
from klingflow.fal.submit import payload_sha256
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord


async def _finished(fal: FalQueue, args: dict) -> str:
    outcome = await fal.submit_once(args)
    for _ in range(200):
        if isinstance(await fal.status(outcome.request_id), Done):  # type: ignore[union-attr]
            return outcome.request_id  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    raise AssertionError("never finished")


async def test_a_request_is_found_by_the_hash_of_its_input(fal: FalQueue, tmp_path: Path) -> None:
    """find_by_payload locates a request by its input payload; another payload is not there."""
    since = time.time()
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    args = {"prompt": "lost answer @Video1", "video_url": await fal.upload(clip)}
    request_id = await _finished(fal, args)
    found = await find_by_payload(fal, payload_sha256(args), since)
    assert found.item is not None and found.item.request_id == request_id
    assert found.complete
    other = await find_by_payload(fal, payload_sha256({**args, "prompt": "other"}), since)
    assert other.item is None and other.complete


async def test_an_earlier_attempt_with_the_same_input_is_not_the_request_looked_for(
    fal: FalQueue, tmp_path: Path
) -> None:
    """A job sent again sends the same input: the requests of its earlier attempts are passed over, so while the
    history does not list the new request yet, the answer is "not there", never the earlier one."""
    since = time.time()
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    args = {"prompt": "sent twice @Video1", "video_url": await fal.upload(clip)}
    earlier = await _finished(fal, args)
    assert (await find_by_payload(fal, payload_sha256(args), since)).item.request_id == earlier  # type: ignore[union-attr]
    sighting = await find_by_payload(fal, payload_sha256(args), since, not_these=[earlier])
    assert sighting.item is None and sighting.complete
    again = await _finished(fal, args)
    sighting = await find_by_payload(fal, payload_sha256(args), since, not_these=[earlier])
    assert sighting.item is not None and sighting.item.request_id == again


async def test_the_same_work_is_recognised_by_its_bytes_not_its_urls(fal: FalQueue, tmp_path: Path) -> None:
    """A request with the same prompt and the same input bytes (uploaded again: a new URL) is adopted."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    args = {"prompt": "adopt me @Video1", "video_url": await fal.upload(clip), "keep_audio": True}
    request_id = await _finished(fal, args)
    from klingflow.hashing import sha256_file

    job = JobRecord(
        job_id="j",
        row=1,
        prompt="adopt me @Video1",
        video=str(clip),
        input_path=str(clip),
        input_sha256=sha256_file(clip),
    )
    item = await RecentRequests(fal).same_work(job)
    assert item is not None and item.request_id == request_id and item.output_url
    other_clip = make_clip(tmp_path / "d.mp4", seconds=4, width=720, height=720)
    other = job.with_(input_path=str(other_clip), input_sha256=sha256_file(other_clip))
    assert await RecentRequests(fal).same_work(other) is None
    assert await RecentRequests(fal).same_work(job.with_(prompt="another prompt @Video1")) is None


async def test_an_unreadable_history_adopts_nothing_and_says_what_that_risks(
    fal: FalQueue, simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """fal's history answers 500 on every try: no adoption, and a warning that unseen jobs are paid as new."""
    from klingflow.simulator import FaultConfig, RouteFaults

    simulator.set_faults(FaultConfig(platform=RouteFaults(http_500=1.0), retry_after_s=0))
    recent = RecentRequests(fal, logging.getLogger("test.history"))
    with caplog.at_level(logging.WARNING, logger="test.history"):
        assert await recent.items() == []
        assert await recent.items() == []  # one read per run, failed or not
    assert simulator.counters()["faults"]["platform.http_500"] == fal.backoff.attempts * HISTORY_SLICES  # each slice
    (record,) = caplog.records
    assert "could not be read" in record.getMessage() and "paid for without checking" in record.getMessage()
