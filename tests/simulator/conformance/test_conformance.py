"""The simulator as a local fal for any client: each scenario runs with the real Python fal_client and
the real @fal-ai/client (1.10.x) and must end the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx

from klingflow.simulator import FaultConfig, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conformance.conftest import clip_url
from tests.simulator.conformance.drivers import Driver
from tests.simulator.conftest import SimFactory, edit_args

MakeDriver = Callable[[Simulator], Driver]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_video(sim: Simulator, data: dict) -> None:
    assert data["video"]["url"].startswith(sim.url + "/files/")
    assert data["video"]["content_type"] == "video/mp4" and data["video"]["file_size"] > 0


def test_upload_small(make_sim: SimFactory, make_driver: MakeDriver, media):
    """A small upload lands on the simulator's storage byte for byte."""
    sim = make_sim()
    url = make_driver(sim)("upload", path=str(media.clip), content_type="video/mp4")["url"]
    assert url.startswith(sim.url + "/files/")
    assert httpx.get(url).content == Path(media.clip).read_bytes()


def test_upload_multipart(make_sim: SimFactory, make_driver: MakeDriver, big_file: Path):
    """A 101 MiB input goes up in parts (11 of 10 MiB) and is reassembled byte for byte."""
    sim = make_sim()
    url = make_driver(sim)("upload", path=str(big_file), content_type="video/mp4")["url"]
    assert sim.counters()["calls"]["upload"] >= 12  # initiate + 11 parts + complete (JS); + token (Python)
    with httpx.stream("GET", url) as response:
        digest = hashlib.sha256()
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == _sha256(big_file.read_bytes())


def test_subscribe_with_logs(make_sim: SimFactory, make_driver: MakeDriver, media):
    """subscribe with logs sees the job's progress logs and returns the edited video, billed once."""
    sim = make_sim()
    out = make_driver(sim)("subscribe", input=edit_args(clip_url(media)))
    _assert_video(sim, out["data"])
    assert out["statuses"][-1] == "COMPLETED"
    assert any(m.startswith("Processing frame") for m in out["logs"])
    assert len(sim.ledger()) == 1


def test_submit_status_result(make_sim: SimFactory, make_driver: MakeDriver, media):
    """submit → status (queued/in progress/completed) → result, and the `/response` URL form agrees."""
    sim = make_sim()
    out = make_driver(sim)("submit_status_result", input=edit_args(clip_url(media)))
    assert out["statuses"][0] == "IN_QUEUE" and out["statuses"][-1] == "COMPLETED"
    _assert_video(sim, out["data"])
    response_form = httpx.get(
        f"{sim.url}/fal-ai/kling-video/requests/{out['request_id']}/response",
        headers={"Authorization": f"Key {TEST_FAL_KEY}"},
    )
    assert response_form.status_code == 200 and response_form.json() == out["data"]


def test_stream_status(make_sim: SimFactory, make_driver: MakeDriver, media):
    """The SSE status stream delivers each change up to COMPLETED, with logs, then closes."""
    sim = make_sim()
    out = make_driver(sim)("stream_status", input=edit_args(clip_url(media)))
    assert out["final_status"] == "COMPLETED" and out["statuses"][-1] == "COMPLETED"
    assert "IN_PROGRESS" in out["statuses"]
    assert any(m.startswith("Processing frame") for m in out["logs"])
    _assert_video(sim, out["data"])
    _assert_video(sim, out["subscribe_data"])


def test_cancel_queued_and_running(make_sim: SimFactory, make_driver: MakeDriver, media):
    """Cancelling a queued and a running request: both end 499 client_cancelled, neither is billed."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = clip_url(media)
    out = make_driver(sim)("cancel", running_input=edit_args(url, "HANG here"), queued_input=edit_args(url))
    assert out["queued_status_before"] == "IN_QUEUE"
    for name in ("queued", "running"):
        assert out[name]["status"] == 499, out
        assert out[name]["body"]["error_type"] == "client_cancelled"
    assert sim.ledger() == []


def test_sync_run(make_sim: SimFactory, make_driver: MakeDriver, media):
    """A synchronous run answers the model's output itself (no queue ticket) and is billed once."""
    sim = make_sim()
    out = make_driver(sim)("run", input=edit_args(clip_url(media)))
    assert "request_id" not in out["data"] and "status_url" not in out["data"]
    _assert_video(sim, out["data"])
    assert len(sim.ledger()) == 1 and sim.counters()["submits"] == 1


def test_invalid_input_422(make_sim: SimFactory, make_driver: MakeDriver, media):
    """An input the model rejects is a 422 whose detail items carry loc, msg, type and a docs url."""
    sim = make_sim()
    out = make_driver(sim)("invalid", input=edit_args(clip_url(media), prompt=""))
    error = out["error"]
    assert error is not None and error["status"] == 422
    detail = error["body"]["detail"]
    assert detail and all({"loc", "msg", "type", "url"} <= item.keys() for item in detail)


def test_queue_full_429_then_admitted(make_sim: SimFactory, make_driver: MakeDriver, media):
    """Over `?fal_max_queue_length` the submit is refused 429; the client's own retries get it in once
    the queue drains, and it is enqueued exactly once."""
    sim = make_sim(concurrency_per_key=1, time_scale=0.5, faults=FaultConfig(retry_after_s=0))
    url = clip_url(media)
    auth = {"Authorization": f"Key {TEST_FAL_KEY}"}
    for _ in range(2):  # one running, one waiting
        httpx.post(f"{sim.url}/fal-ai/kling-video/o3/pro/video-to-video/edit", json=edit_args(url), headers=auth)
    out = make_driver(sim)("queue_full", input=edit_args(url), max_queue_length=1)
    assert out["request_id"]
    assert sim.counters()["totals"]["queue_full_rejections"] >= 1
    assert sim.counters()["submits"] == 3
