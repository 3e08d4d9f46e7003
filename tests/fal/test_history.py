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


def _job(clip: Path, prompt: str, row: int = 1) -> JobRecord:
    from klingflow.hashing import sha256_file

    return JobRecord(
        job_id=f"j{row}",
        row=row,
        prompt=prompt,
        video=str(clip),
        input_path=str(clip),
        input_sha256=sha256_file(clip),
    )


async def test_jobs_about_to_submit_share_one_fresh_history_read(fal: FalQueue, simulator) -> None:
    """Twenty jobs ask at once: one read serves them all (coalesced), and it began after they asked."""
    recent = RecentRequests(fal, min_interval_s=0.05)
    await recent.items()
    before = simulator.counters()["calls"].get("platform", 0)
    await asyncio.gather(*(recent.refresh() for _ in range(20)))
    assert recent.reads == 2  # the window read, then one refresh for all twenty
    assert simulator.counters()["calls"].get("platform", 0) - before == 1
    await recent.refresh()
    assert recent.reads == 3  # asked after that read began: a read of its own


async def test_a_request_that_started_after_the_first_read_is_adopted_right_before_the_submit(
    fal: FalQueue, tmp_path: Path
) -> None:
    """The once-per-run read missed it (sent later); the read before the submit lists it and the job adopts it."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    job = _job(clip, "sent meanwhile @Video1")
    recent = RecentRequests(fal, min_interval_s=0.05)
    assert await recent.items() == []
    request_id = await _finished(fal, {"prompt": job.prompt, "video_url": await fal.upload(clip)})
    assert await recent.same_work(job) is None  # the first read alone does not know it
    found = await recent.before_submit(job)
    assert found is not None and found.request_id == request_id
    assert recent.submits == 0 and request_id in recent.adopted
    other = await recent.before_submit(job.with_(prompt="not sent by anyone @Video1"))
    assert other is None and recent.submits == 1


async def test_requests_this_ledger_does_not_know_show_another_run_before_the_first_submit(
    fal: FalQueue, tmp_path: Path
) -> None:
    """Another run's listed request: on_peer is told before this run's first submit, once, and this run (the later
    one) takes the manifest from its end; its own listed request does not count."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    theirs = await _finished(fal, {"prompt": "their job @Video1", "video_url": await fal.upload(clip)})
    known: set[str] = set()
    told: list[bool] = []
    recent = RecentRequests(
        fal, min_interval_s=0.05, known_ids=lambda: known, on_peer=told.append, jitter_s=(0.01, 0.02)
    )
    assert await recent.before_submit(_job(clip, "my job @Video1")) is None
    assert told == [True] and recent.peer and recent.reverse
    assert recent.reads == 2  # the window (begun after the job asked: fresh), then the read after the jitter
    assert await recent.before_submit(_job(clip, "my second job @Video1", row=2)) is None
    assert told == [True]  # warned once

    alone = RecentRequests(fal, min_interval_s=0.05, known_ids=lambda: {theirs}, on_peer=told.append)
    assert await alone.before_submit(_job(clip, "my job @Video1")) is None
    assert told == [True] and alone.peer is None and not alone.reverse  # a request the ledger knows is its own


async def test_of_two_runs_the_one_whose_first_listed_request_is_later_turns(fal: FalQueue, tmp_path: Path) -> None:
    """Both read one history: the run that sent first keeps the manifest's order, the other takes it from the end."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await fal.upload(clip)
    first = await _finished(fal, {"prompt": "first run @Video1", "video_url": url})
    second = await _finished(fal, {"prompt": "second run @Video1", "video_url": url})
    runs = {
        name: RecentRequests(fal, min_interval_s=0.05, known_ids=lambda ids=ids: ids, jitter_s=(0.0, 0.0))
        for name, ids in (("first", {first}), ("second", {second}))
    }
    for recent in runs.values():
        await recent.before_submit(_job(clip, "a third job @Video1"))
    assert not runs["first"].reverse and runs["second"].reverse


async def test_the_turned_run_leaves_the_rows_next_to_the_other_runs_frontier_to_it(
    fal: FalQueue, tmp_path: Path
) -> None:
    """The other run has listed row 3; a turned run about to submit row 5 waits for it to be listed and adopts
    it (the other run sent it meanwhile); row 12, far from the frontier, is submitted at once."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await fal.upload(clip)
    jobs = [_job(clip, f"row {row} @Video1", row=row) for row in range(1, 13)]
    await _finished(fal, {"prompt": jobs[2].prompt, "video_url": url})
    recent = RecentRequests(fal, min_interval_s=0.05, known_ids=set, jitter_s=(0.0, 0.0), contest_rows=3)
    recent.expect(jobs)
    assert await recent.before_submit(jobs[11]) is None and recent.reverse
    waiting = asyncio.create_task(recent.before_submit(jobs[4]))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # row 5 is within 3 rows of the other run's row 3: left to it
    theirs = await _finished(fal, {"prompt": jobs[4].prompt, "video_url": url})
    found = await asyncio.wait_for(waiting, 30)
    assert found is not None and found.request_id == theirs
