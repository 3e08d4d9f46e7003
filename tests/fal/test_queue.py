"""FalQueue: status, result, cancel and history as typed outcomes; reads retried, bills read from headers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import fal_client.client as fc
import pytest

from klingflow.errors import FalRejected, FalTransient
from klingflow.fal.outcomes import CancelReply, Done, Failure, Output, Queued, Running
from klingflow.fal.queue import Backoff, FalQueue, Target
from klingflow.fal.submit import payload_sha256
from klingflow.fal.urls import current_urls
from klingflow.media.synth import make_clip
from klingflow.simulator import FaultConfig, RouteFaults
from tests.conftest import SESSION_KEY as KEY


async def _submit(fal: FalQueue, tmp_path: Path, prompt: str = "p @Video1") -> str:
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    outcome = await fal.submit_once({"prompt": prompt, "video_url": await fal.upload(clip)})
    return outcome.request_id  # type: ignore[union-attr]


async def _until_done(fal: FalQueue, request_id: str) -> Done:
    for _ in range(200):
        status = await fal.status(request_id)
        if isinstance(status, Done):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("never done")


async def test_status_logs_and_the_bill_from_the_result_header(simulator, fal: FalQueue, tmp_path: Path) -> None:
    """Statuses are typed, fal's log lines come with them, and the result carries the billed units."""
    request_id = await _submit(fal, tmp_path)
    first = await fal.status(request_id)
    assert isinstance(first, Queued | Running | Done)
    done = await _until_done(fal, request_id)
    assert any("Processing frame" in line["message"] for line in done.logs)
    assert done.inference_s and done.inference_s > 0
    result = await fal.result(request_id)
    assert isinstance(result, Output) and result.billable_units == 3.0
    assert simulator.ledger()[0].request_id == request_id


@pytest.mark.parametrize("fault", ["http_429", "http_500", "ingress_5xx", "drop"])
async def test_a_transient_error_on_the_result_is_retried(simulator, fal: FalQueue, tmp_path: Path, fault: str) -> None:
    """A 429/500/502/503 or dropped connection on a finished request's result is a read: asked again."""
    request_id = await _submit(fal, tmp_path)
    await _until_done(fal, request_id)
    simulator.set_faults(FaultConfig(result=RouteFaults(**{fault: 1.0}, max_count=2), retry_after_s=0))
    result = await fal.result(request_id)
    assert isinstance(result, Output)
    assert simulator.counters()["calls_by_request"][request_id]["result"] == 3


async def test_reads_give_up_as_transient_never_as_a_failure(simulator, fal: FalQueue, tmp_path: Path) -> None:
    """When every attempt fails the caller gets FalTransient (resumable), not a failed request."""
    request_id = await _submit(fal, tmp_path)
    await _until_done(fal, request_id)
    simulator.set_faults(FaultConfig(result=RouteFaults(http_500=1.0), status=RouteFaults(http_500=1.0)))
    with pytest.raises(FalTransient):
        await fal.result(request_id)
    with pytest.raises(FalTransient):
        await fal.status(request_id)
    assert simulator.counters()["calls_by_request"][request_id]["result"] == fal.backoff.attempts


async def test_an_unknown_request_is_rejected_not_transient(fal: FalQueue) -> None:
    """fal no longer knowing an id (expired result) is a definite answer."""
    with pytest.raises(FalRejected) as info:
        await fal.status("00000000-0000-0000-0000-000000000000")
    assert info.value.status == 404


async def test_cancel_of_a_queued_request_is_confirmed_by_its_result(simulator, fal: FalQueue, tmp_path: Path) -> None:
    """A queued request cancelled: fal answers CANCELLATION_REQUESTED, then its result says cancelled."""
    simulator.set_faults(FaultConfig(hang_prompts_containing=["HANG"]))
    for i in range(2):
        await _submit(fal, tmp_path, f"HANG {i} @Video1")
    queued = await _submit(fal, tmp_path, "third @Video1")
    assert isinstance(await fal.status(queued), Queued)
    assert await fal.cancel(queued) is CancelReply.requested
    await _until_done(fal, queued)
    result = await fal.result(queued)
    assert isinstance(result, Failure) and result.cancelled
    assert await fal.cancel(queued) is CancelReply.already_completed
    assert simulator.ledger() == []


async def test_history_lists_the_request_with_its_payload(simulator, fal: FalQueue, tmp_path: Path) -> None:
    """The request history comes back typed, with the input as sent (to settle a lost answer)."""
    from datetime import UTC, datetime, timedelta

    request_id = await _submit(fal, tmp_path)
    await _until_done(fal, request_id)
    items = await fal.history(start=datetime.now(UTC) - timedelta(minutes=5))
    (item,) = [i for i in items if i.request_id == request_id]
    assert item.has_payload and item.status_code == 200 and item.output_url
    assert payload_sha256(item.json_input)


async def test_urls_and_proxy_settings_are_restored_after_the_run(simulator, monkeypatch) -> None:
    """fal_client's URL constants and NO_PROXY are what they were once the queue is closed."""
    monkeypatch.setenv("NO_PROXY", "example.internal")
    monkeypatch.delenv("no_proxy", raising=False)
    before = current_urls()
    async with FalQueue(Target.simulator(simulator.url), KEY):
        assert fc.QUEUE_URL_FORMAT == simulator.url + "/"
        assert os.environ["NO_PROXY"] == "example.internal,127.0.0.1,localhost,::1"
    assert current_urls() == before
    assert os.environ["NO_PROXY"] == "example.internal"
    assert "no_proxy" not in os.environ


async def test_two_runs_to_one_simulator_share_the_switch(simulator) -> None:
    """Two queues open at once on the same base: the first to close leaves fal_client pointed for the other."""
    before = current_urls()
    first = await FalQueue(Target.simulator(simulator.url), KEY, backoff=Backoff(base_s=0)).__aenter__()
    async with FalQueue(Target.simulator(simulator.url), KEY):
        await first.__aexit__(None, None, None)
        assert fc.REST_URL == simulator.url
    assert current_urls() == before


async def test_a_run_for_another_base_is_refused_while_one_is_active(simulator) -> None:
    """The constants are process-wide: a second target at the same time is refused, not silently mixed."""
    from klingflow.errors import BackendError

    async with FalQueue(Target.simulator(simulator.url), KEY):
        with pytest.raises(BackendError, match="another run"):
            async with FalQueue(Target.simulator("http://127.0.0.1:9"), KEY):
                pass
        assert fc.REST_URL == simulator.url
