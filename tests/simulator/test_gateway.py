"""fal's gateway behaviours at the HTTP level: unknown routes, the queue-length limit, endpoint-wide queue
positions, model-error fields and headers, the sync-run base and the signed multipart upload."""

from __future__ import annotations

import time

import fal_client
import httpx

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import FaultConfig, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}
OTHER = {"Authorization": "Key another-key:secret"}


def _upload(sim: Simulator, media) -> str:
    return fal_client.SyncClient(key=TEST_FAL_KEY).upload_file(media.silent)


def _submit(sim: Simulator, args: dict, headers: dict = AUTH, query: str = "") -> httpx.Response:
    return httpx.post(f"{sim.url}/{ENDPOINT_ID}{query}", json=args, headers=headers)


def _completed(sim: Simulator, request_id: str, headers: dict = AUTH) -> None:
    for _ in range(400):
        status = httpx.get(f"{sim.url}/fal-ai/kling-video/requests/{request_id}/status", headers=headers).json()
        if status["status"] == "COMPLETED":
            return
        time.sleep(0.025)
    raise AssertionError(f"{request_id} never completed")


def test_unknown_routes_are_404_not_submits(sim: Simulator):
    """A path no route knows is 404 in fal's queue error shape, whatever the method; a POST to an
    unknown app is fal's 'Application not found', and neither enqueues anything."""
    for method in ("GET", "PUT", "DELETE"):
        response = httpx.request(method, f"{sim.url}/v2/nothing/here", headers=AUTH)
        assert response.status_code == 404 and response.json() == {"detail": "Route not found"}
    response = httpx.post(f"{sim.url}/fal-ai/not-an-app", json={}, headers=AUTH)
    assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert sim.counters()["submits"] == 0


def test_max_queue_length_refuses_with_429(make_sim, media):
    """`?fal_max_queue_length=N` answers 429 (with Retry-After) when N are already waiting, and the
    refused request is not enqueued; without the parameter nothing is refused."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"], retry_after_s=3))
    url = _upload(sim, media)
    for _ in range(2):
        assert _submit(sim, edit_args(url, "HANG")).status_code == 200  # one running, one waiting
    refused = _submit(sim, edit_args(url), query="?fal_max_queue_length=1")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    assert _submit(sim, edit_args(url), query="?fal_max_queue_length=2").status_code == 200
    assert sim.counters()["submits"] == 3
    assert sim.counters()["totals"]["queue_full_rejections"] == 1


def test_queue_position_counts_every_key(make_sim, media):
    """One queue per endpoint: a waiting request's position counts the earlier waiting requests of
    every key, not only its own key's."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = _upload(sim, media)
    for headers in (AUTH, AUTH, OTHER):
        _submit(sim, edit_args(url, "HANG"), headers)  # AUTH: running + waiting; OTHER: running
    late = _submit(sim, edit_args(url, "HANG"), OTHER).json()
    assert late["status"] == "IN_QUEUE" and late["queue_position"] == 1
    status = httpx.get(late["status_url"], headers=OTHER).json()
    assert status["queue_position"] == 1


def test_model_error_has_url_and_retryable_header(sim: Simulator, media):
    """A 422 result carries a docs `url` on each detail item and X-Fal-Retryable: false."""
    rid = _submit(sim, edit_args(_upload(sim, media), prompt="")).json()["request_id"]
    _completed(sim, rid)
    for suffix in ("", "/response"):
        result = httpx.get(f"{sim.url}/fal-ai/kling-video/requests/{rid}{suffix}", headers=AUTH)
        assert result.status_code == 422 and result.headers["x-fal-retryable"] == "false"
        assert all(item["url"].startswith("https://docs.fal.ai/") for item in result.json()["detail"])


def test_sync_run_returns_output_on_the_run_base(sim: Simulator, media):
    """POST /run/<endpoint> answers the output with x-fal-billable-units; the queue base still answers
    a ticket; an unknown app on the run base is 404."""
    url = _upload(sim, media)
    run = httpx.post(f"{sim.url}/run/{ENDPOINT_ID}", json=edit_args(url), headers=AUTH, timeout=60)
    assert run.status_code == 200 and "video" in run.json() and int(run.headers["x-fal-billable-units"]) >= 3
    assert _submit(sim, edit_args(url)).json()["status"] == "IN_QUEUE"
    assert httpx.post(f"{sim.url}/run/fal-ai/nope", json={}, headers=AUTH).status_code == 404


def test_signed_multipart_refuses_a_bad_signature(sim: Simulator):
    """The part and complete URLs of a multipart upload only work with their signature."""
    start = httpx.post(
        f"{sim.url}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        json={"file_name": "a.mp4", "content_type": "video/mp4"},
        headers=AUTH,
    ).json()
    base, _, query = start["upload_url"].partition("?")
    part = httpx.put(f"{base}/1?{query}", content=b"abc")
    assert part.status_code == 200 and part.json()["partNumber"] == 1
    assert httpx.put(f"{base}/2?signature=forged", content=b"x").status_code == 403
    done = httpx.post(f"{base}/complete?{query}", json={"parts": [part.json()]})
    assert done.status_code == 200 and httpx.get(start["file_url"]).content == b"abc"
