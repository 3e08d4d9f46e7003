"""Queue protocol through the real fal_client: submit, status, logs, positions, cancel, timeouts."""

from __future__ import annotations

import time

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import FaultConfig, Simulator
from klingflow.simulator.protocol import request_urls
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args, submit

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}


def _wait_status(handle, wanted: type, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = handle.status(with_logs=True)
        if isinstance(status, wanted):
            return status
        time.sleep(0.02)
    raise AssertionError(f"request never reached {wanted.__name__}")


def test_sync_subscribe_reports_logs_and_returns_video(sim: Simulator, client: fal_client.SyncClient, media):
    """subscribe() with logs sees IN_PROGRESS 'Processing frame' logs and gets the output JSON."""
    url = client.upload_file(media.clip)
    updates: list[fal_client.Status] = []
    result = client.subscribe(ENDPOINT_ID, edit_args(url), with_logs=True, on_queue_update=updates.append)
    assert result["video"]["content_type"] == "video/mp4"
    assert result["video"]["url"].startswith(sim.url + "/files/")
    messages = [log["message"] for u in updates if isinstance(u, fal_client.InProgress) for log in u.logs]
    assert any(m.startswith("Processing frame") for m in messages)
    final = updates[-1]
    assert isinstance(final, fal_client.Completed) and final.error is None
    assert final.metrics["inference_time"] > 0


async def test_async_subscribe_returns_video(sim: Simulator, aclient: fal_client.AsyncClient, media):
    """The async client submits, polls and fetches the result the same way."""
    url = await aclient.upload_file(media.silent)
    updates: list[fal_client.Status] = []
    result = await aclient.subscribe(ENDPOINT_ID, edit_args(url), with_logs=True, on_queue_update=updates.append)
    assert result["video"]["file_size"] > 0
    assert any(isinstance(u, fal_client.InProgress) and u.logs for u in updates)


def test_submit_returns_owner_alias_urls(sim: Simulator, client: fal_client.SyncClient, media):
    """Submit answers IN_QUEUE with absolute owner/alias-only request URLs."""
    url = client.upload_file(media.silent)
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=edit_args(url), headers=AUTH)
    body = response.json()
    root = f"{sim.url}/fal-ai/kling-video/requests/{body['request_id']}"
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (root, root + "/status", root + "/cancel")


def test_status_with_and_without_logs(make_sim, client: fal_client.SyncClient, media):
    """logs=false gives logs None; logs=true lists {message, level, source, timestamp}; 202 then 200."""
    sim = make_sim(time_scale=0.3)
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    _wait_status(handle, fal_client.InProgress)
    assert handle.status(with_logs=False).logs is None
    raw = httpx.get(handle.status_url, params={"logs": "1"}, headers=AUTH)
    assert raw.status_code == 202
    assert set(raw.json()["logs"][0]) == {"message", "level", "source", "timestamp"}
    handle.get()
    done = httpx.get(handle.status_url, params={"logs": "true"}, headers=AUTH)
    assert done.status_code == 200 and done.json()["status"] == "COMPLETED"
    assert handle.status(with_logs=False).logs is None
    assert sim.counters()["calls_by_request"][handle.request_id]["status"] >= 4


def test_result_before_completion_is_400(make_sim, client: fal_client.SyncClient, media):
    """Fetching the result of a running request is a 400 'still in progress'."""
    make_sim(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    handle = submit(client, edit_args(client.upload_file(media.silent), prompt="HANG please"))
    _wait_status(handle, fal_client.InProgress)
    response = httpx.get(handle.response_url, headers=AUTH)
    assert response.status_code == 400 and "in progress" in response.json()["detail"]
    handle.cancel()


def test_queue_position_when_key_limit_is_full(make_sim, client: fal_client.SyncClient, media):
    """With 2 slots per key, the 3rd and 4th requests wait at positions 0 and 1, FIFO."""
    sim = make_sim(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    running = [submit(client, edit_args(url, prompt=f"HANG {i}")) for i in range(2)]
    waiting = [submit(client, edit_args(url, prompt=f"edit {i}")) for i in range(2)]
    for handle in running:
        _wait_status(handle, fal_client.InProgress)
    assert [h.status() for h in waiting] == [fal_client.Queued(position=0), fal_client.Queued(position=1)]
    running[0].cancel()
    _wait_status(waiting[0], fal_client.InProgress)
    assert waiting[1].status() == fal_client.Queued(position=0)
    running[1].cancel()
    for handle in waiting:
        assert "video" in handle.get()
    key = sim.counters()["keys"]
    assert next(iter(key.values()))["max_in_progress"] == 2
    assert next(iter(key.values()))["max_in_flight"] == 4


def test_other_key_has_its_own_slots(make_sim, media):
    """The concurrency limit is per key: a second key is not queued behind the first."""
    sim = make_sim(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    first, second = fal_client.SyncClient(key="key-one"), fal_client.SyncClient(key="key-two")
    url = first.upload_file(media.silent)
    hung = [submit(first, edit_args(url, prompt="HANG")) for _ in range(2)]
    result = second.subscribe(ENDPOINT_ID, edit_args(url))
    assert "video" in result
    for handle in hung:
        handle.cancel()
    assert len(sim.counters()["keys"]) == 2


def test_cancel_queued_is_never_processed_or_billed(make_sim, client: fal_client.SyncClient, media):
    """A cancelled queued request completes with a cancel error, never starts and is not billed, even when
    every cancel of a running request would be ignored."""
    faults = FaultConfig(hang_prompts_containing=["HANG"], cancel_running_completes_rate=1.0)
    sim = make_sim(concurrency_per_key=1, faults=faults)
    url = client.upload_file(media.silent)
    blocker = submit(client, edit_args(url, prompt="HANG"))
    queued = submit(client, edit_args(url))
    queued.cancel()
    status = queued.status(with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        queued.get()
    assert err.value.status_code == 499
    sim.set_faults(FaultConfig(hang_prompts_containing=["HANG"]))
    blocker.cancel()
    rows = {r["request_id"]: r for r in httpx.get(f"{sim.url}/_simulator/requests").json()}
    assert rows[queued.request_id]["started_at"] is None
    assert rows[queued.request_id]["outcome"] == "cancelled"
    assert sim.ledger() == []


def test_cancel_running_completes_without_billing(make_sim, client: fal_client.SyncClient, media):
    """Cancelling an IN_PROGRESS request ends it as COMPLETED with an error; nothing is billed."""
    sim = make_sim(time_scale=2.0)
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    _wait_status(handle, fal_client.InProgress)
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.cancel()
    assert err.value.status_code == 400 and err.value.response.json() == {"status": "ALREADY_COMPLETED"}
    assert sim.ledger() == []
    assert next(iter(sim.counters()["keys"].values()))["in_progress"] == 0


def test_ignored_cancel_of_running_request_completes_and_bills(make_sim, client: fal_client.SyncClient, media):
    """At cancel_running_completes_rate=1 a running request's cancel is 202 but it completes and is billed."""
    sim = make_sim(time_scale=0.5, faults=FaultConfig(cancel_running_completes_rate=1.0))
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    _wait_status(handle, fal_client.InProgress)
    response = httpx.put(handle.cancel_url, headers=AUTH)
    assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
    handle.cancel()  # the real client sees the same 202
    assert isinstance(handle.status(), fal_client.InProgress)
    result = handle.get()
    assert "video" in result
    [entry] = sim.ledger()
    assert entry.request_id == handle.request_id and entry.billed_seconds == 3
    assert httpx.get(handle.response_url, headers=AUTH).headers["x-fal-billable-units"] == "3"
    counters = sim.counters()
    assert counters["billed"] == 1 and counters["faults"] == {"job.cancel_ignored": 2}
    late = httpx.put(handle.cancel_url, headers=AUTH)
    assert late.status_code == 400 and late.json() == {"status": "ALREADY_COMPLETED"}


def test_cancelled_result_is_499_client_cancelled(make_sim, client: fal_client.SyncClient, media):
    """The result of a cancelled request is HTTP 499 {detail, error_type: client_cancelled} + x-fal-error-type."""
    sim = make_sim(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    handle = submit(client, edit_args(client.upload_file(media.silent), prompt="HANG"))
    _wait_status(handle, fal_client.InProgress)
    handle.cancel()
    response = httpx.get(handle.response_url, headers=AUTH)
    assert response.status_code == 499
    assert response.json() == {"detail": "Request was cancelled", "error_type": "client_cancelled"}
    assert response.headers["x-fal-error-type"] == "client_cancelled" and "x-fal-billable-units" not in response.headers
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 499 and err.value.error_type == "client_cancelled"
    assert sim.ledger() == [] and sim.counters()["billed"] == 0


def test_unknown_request_id_is_404(sim: Simulator, client: fal_client.SyncClient):
    """Status, result and cancel of an unknown id answer 404."""
    handle = client.get_handle(ENDPOINT_ID, "00000000-0000-0000-0000-000000000000")
    for call in (handle.status, handle.get, handle.cancel):
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            call()
        assert err.value.status_code == 404


def test_start_timeout_expires_queued_request(make_sim, client: fal_client.SyncClient, media):
    """A request not started within X-Fal-Request-Timeout completes with a 504 user timeout."""
    make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    blocker = submit(client, edit_args(url, prompt="HANG"))
    late = submit(client, edit_args(url), start_timeout=1.5)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        late.get()
    assert err.value.status_code == 504
    assert err.value.response.headers["x-fal-request-timeout-type"] == "user"
    blocker.cancel()


def test_start_timeout_header_newer_name(make_sim, client: fal_client.SyncClient, media):
    """X-Fal-Request-Start-Timeout drops a request not started in time: 504 user timeout, never run, unbilled."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    blocker = submit(client, edit_args(url, prompt="HANG"))
    late = submit(client, edit_args(url), headers={"X-Fal-Request-Start-Timeout": "1.2"})
    patient = submit(client, edit_args(url), headers={"X-Fal-Request-Start-Timeout": "600"})
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        late.get()
    assert err.value.status_code == 504
    assert err.value.response.headers["x-fal-request-timeout-type"] == "user"
    blocker.cancel()
    assert "video" in patient.get()
    rows = {r["request_id"]: r for r in httpx.get(f"{sim.url}/_simulator/requests").json()}
    assert rows[late.request_id]["outcome"] == "timeout" and rows[late.request_id]["started_at"] is None
    assert [e.request_id for e in sim.ledger()] == [patient.request_id]


def test_unknown_routes_are_404(sim: Simulator, client: fal_client.SyncClient, media):
    """Unknown platform routes are 404 in the platform shape, other unknown paths/methods 404; submit still works."""
    for method, path in (
        ("GET", "/v1/models/prices"),
        ("GET", "/v1/models/billing"),
        ("PUT", "/v1/models/requests/by-endpoint"),
        ("DELETE", "/v1/models/pricing"),
    ):
        response = httpx.request(method, sim.url + path, headers=AUTH, json={})
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found", path
    for method, path in (
        ("GET", f"/{ENDPOINT_ID}"),
        ("GET", "/nothing/here"),
        ("DELETE", "/fal-ai/kling-video/requests/x"),
        ("POST", "/fal-ai/other/model"),
    ):
        response = httpx.request(method, sim.url + path, headers=AUTH)
        assert response.status_code == 404 and "detail" in response.json(), path
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    assert request_urls(sim.url, handle.request_id)["status_url"] == handle.status_url
    assert "video" in handle.get()


def test_get_handle_reaches_submitted_request(sim: Simulator, client: fal_client.SyncClient, media):
    """fal_client.get_handle(app, id) builds the same URLs the submit returned."""
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    rebuilt = client.get_handle(ENDPOINT_ID, handle.request_id)
    assert (rebuilt.status_url, rebuilt.response_url) == (handle.status_url, handle.response_url)
    assert rebuilt.get() == handle.get()
