"""Submit: one POST per job, repeated only when the queue provably did not get it, with a start deadline."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from klingflow.fal.outcomes import Accepted, Done, Failure, Rejected, Unknown
from klingflow.fal.queue import Backoff, FalQueue, Target
from klingflow.fal.submit import edit_arguments, pack_tags, payload_sha256, request_tags, submit_headers
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord
from klingflow.simulator import FaultConfig, RouteFaults
from tests.conftest import SESSION_KEY as KEY


@pytest.fixture
async def arguments(tmp_path: Path, fal: FalQueue) -> dict:
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    return {"prompt": "Edit @Video1", "video_url": await fal.upload(clip)}


async def test_429_is_retried_and_submitted_once(simulator, fal: FalQueue, arguments: dict) -> None:
    """Rate limiting rejects the request, so resending is safe: one request reaches the queue."""
    simulator.set_faults(FaultConfig(submit=RouteFaults(http_429=1.0, max_count=2), retry_after_s=0))
    outcome = await fal.submit_once(arguments)
    assert isinstance(outcome, Accepted) and outcome.request_id
    assert simulator.counters()["submits"] == 1
    assert simulator.counters()["faults"]["submit.http_429"] == 2


@pytest.mark.parametrize("fault", ["drop_after", "ingress_5xx", "http_500"])
async def test_ambiguous_failures_are_never_resent(simulator, fal: FalQueue, arguments: dict, fault: str) -> None:
    """A lost answer or a 5xx leaves the outcome unknown: no second POST (fal_client would resend)."""
    simulator.set_faults(FaultConfig(submit=RouteFaults(**{fault: 1.0}, max_count=1)))
    outcome = await fal.submit_once(arguments)
    assert isinstance(outcome, Unknown)
    assert KEY not in outcome.reason
    assert simulator.counters()["calls"]["submit"] == 1


async def test_refused_connection_is_retried_then_rejected() -> None:
    """Nothing listening: the POST never left, so it is retried, then rejected (not unknown)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with FalQueue(Target.simulator(f"http://127.0.0.1:{port}"), KEY, backoff=Backoff(base_s=0)) as queue:
        outcome = await queue.submit_once({"prompt": "p", "video_url": "u"})
    assert isinstance(outcome, Rejected) and "cannot connect" in outcome.reason


async def test_a_4xx_is_a_rejection_with_fals_reason(simulator, fal: FalQueue) -> None:
    """fal answering 4xx to the POST queued nothing: a rejection naming the status."""
    async with FalQueue(Target.simulator(simulator.url), KEY, endpoint="fal-ai/no-such-app") as queue:
        outcome = await queue.submit_once({"prompt": "p"})
    assert isinstance(outcome, Rejected) and outcome.status == 404
    assert simulator.counters()["submits"] == 0


async def test_the_start_deadline_drops_a_request_that_never_started(simulator, fal: FalQueue, arguments: dict) -> None:
    """Both start-deadline headers are sent; a request still queued past it ends 504, unbilled."""
    assert submit_headers(0.4) == {"X-Fal-Request-Timeout": "1", "X-Fal-Request-Start-Timeout": "1"}
    simulator.set_faults(FaultConfig(hang_prompts_containing=["HANG"]))
    for i in range(2):  # the key's two running slots stay busy
        assert isinstance(await fal.submit_once({**arguments, "prompt": f"HANG {i} @Video1"}), Accepted)
    queued = await fal.submit_once(arguments, headers=submit_headers(0.4))
    assert isinstance(queued, Accepted)
    for _ in range(60):
        if isinstance(await fal.status(queued.request_id), Done):
            break
        await asyncio.sleep(0.1)
    result = await fal.result(queued.request_id)
    assert isinstance(result, Failure) and result.status == 504
    assert simulator.ledger() == []


def test_arguments_follow_the_endpoint_schema_and_hash_stably() -> None:
    """The payload is the endpoint's schema with defaults spelt out; its hash ignores key order."""
    record = JobRecord(job_id="j", row=3, prompt="Edit @Video1", video="v.mp4", video_url="https://x/v.mp4")
    args = edit_arguments(record)
    assert args["keep_audio"] is True and args["shot_type"] == "customize" and args["image_urls"] == []
    assert payload_sha256(args) == payload_sha256(dict(reversed(list(args.items()))))


def test_a_request_is_tagged_with_its_run_and_its_job_key_prefix() -> None:
    tags = request_tags("6f1c0d2e-run", "ab" * 32)
    assert tags == {"klingflow.run": "6f1c0d2e-run", "klingflow.job": "ab" * 8}
    assert submit_headers(10, tags)["X-Fal-Tags"] == f"klingflow.run=6f1c0d2e-run,klingflow.job={'ab' * 8}"
    assert "X-Fal-Tags" not in submit_headers(10)


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ({"Klingflow.run": "x"}, "tag key"),  # upper case
        ({"fal.run": "x"}, "tag key"),  # fal's reserved prefix
        ({"k" * 65: "x"}, "tag key"),
        ({"k": "v" * 257}, "value"),
        ({"k": "a,b"}, "value"),  # would split into two pairs
        ({"k": "a=b"}, "value"),
        ({"k": ""}, "value"),
        ({f"k{i}": "v" for i in range(11)}, "at most 10"),
        ({f"k{i}": "v" * 200 for i in range(6)}, "1024"),
    ],
)
def test_a_tag_fals_gateway_would_drop_is_refused_before_sending(tags: dict[str, str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        pack_tags(tags)
