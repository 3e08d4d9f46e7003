"""Collect: the adaptive polling schedule, fal's logs, the bill from the result header, atomic downloads."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import fal_client
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.fal.backend import BackendSession
from klingflow.fal.urls import point_fal_client_at
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord
from tasks.collect import PollSettings, download_and_verify, next_interval, wait_for_result
from tests.conftest import SESSION_KEY as KEY


def _polls_for(duration_s: float, settings: PollSettings) -> int:
    elapsed, interval, polls = 0.0, settings.interval_s, 0
    while True:
        polls += 1
        if elapsed >= duration_s:
            return polls
        elapsed += interval
        interval = next_interval(interval, settings)


def test_default_schedule_costs_at_most_three_polls_per_job_minute() -> None:
    """With the defaults (5 s growing to 30 s), a 5-minute Kling job costs < 3 status calls a minute."""
    defaults = PollSettings(5.0, 30.0, 3600)
    assert _polls_for(300, defaults) / 5 < 3
    assert _polls_for(600, defaults) / 10 < 2.5
    assert next_interval(20.0, defaults) == 30.0


async def test_wait_counts_polls_forwards_logs_and_reads_the_bill(
    tmp_path: Path, simulator, session: BackendSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Our poll count matches the simulator's; fal's log lines reach our log; the bill is the header's."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await session.client.upload_file(clip)
    handle = await session.client.submit(ENDPOINT_ID, {"prompt": "p @Video1", "video_url": url})
    record = JobRecord(
        job_id="j",
        row=1,
        prompt="p",
        video=str(clip),
        request_id=handle.request_id,
        submitted_at=datetime.now(UTC),
        input_duration_s=3.0,
        estimated_seconds=3,
    )
    logger = logging.getLogger("collect-test")
    with caplog.at_level(logging.INFO, logger="collect-test"):
        done = await wait_for_result(record, session, ENDPOINT_ID, PollSettings(0.05, 0.2, 60), logger)
    assert done.output_url
    assert (done.billed_seconds, done.cost_source, done.cost_usd) == (3.0, "header", 1.008)
    assert done.status_polls == simulator.counters()["calls_by_request"][handle.request_id]["status"]
    assert any("[fal]" in r.getMessage() for r in caplog.records)
    assert done.started_at is not None
    assert done.submitted_at <= done.started_at <= done.completed_at

    final = await download_and_verify(done, tmp_path / "out")
    assert final.status == "succeeded"
    assert Path(final.output_path).is_file()
    assert not list((tmp_path / "out").glob(".*.part"))


async def test_timeout_cancels_the_request(tmp_path: Path, simulator, session: BackendSession) -> None:
    """A job past its timeout is cancelled at fal and reported as cancelled, never billed."""
    from klingflow.simulator import FaultConfig

    simulator.set_faults(FaultConfig(hang_prompts_containing=["HANG"]))
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await session.client.upload_file(clip)
    handle = await session.client.submit(ENDPOINT_ID, {"prompt": "HANG @Video1", "video_url": url})
    record = JobRecord(
        job_id="j", row=1, prompt="HANG", video=str(clip), request_id=handle.request_id, submitted_at=datetime.now(UTC)
    )
    done = await wait_for_result(
        record, session, ENDPOINT_ID, PollSettings(0.05, 0.1, 0.5), logging.getLogger("collect-test")
    )
    assert done.status == "cancelled"
    assert "timed out" in done.error
    outcome = next(r for r in simulator_requests(simulator) if r["request_id"] == handle.request_id)["outcome"]
    assert outcome == "cancelled"
    assert simulator.ledger() == []


async def test_a_wrong_duration_output_is_rejected_and_leaves_no_file(tmp_path: Path, simulator) -> None:
    """Verification fails when the output's duration differs from the input's; no partial file remains."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    sync = fal_client.SyncClient(key=KEY)
    point_fal_client_at(simulator.url)
    url = sync.upload_file(clip)
    record = JobRecord(
        job_id="j", row=1, prompt="p", video=str(clip), request_id="r", output_url=url, input_duration_s=8.0
    )
    done = await download_and_verify(record, tmp_path / "out")
    assert done.status == "failed"
    assert "lasts 3.00 s but the input lasts 8.00 s" in done.error
    assert list((tmp_path / "out").iterdir()) == []


def simulator_requests(simulator) -> list[dict]:
    import httpx

    body = httpx.get(f"{simulator.url}/_simulator/requests").json()
    return body["requests"] if isinstance(body, dict) else body
