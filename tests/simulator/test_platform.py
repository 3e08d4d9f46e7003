"""Platform API: request history (GET /v1/models/requests/by-endpoint), its error shape and its faults."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import FaultConfig, RouteFaults, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args, submit

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}
OTHER_AUTH = {"Authorization": "Key another-key:not-a-secret"}
HISTORY = "/v1/models/requests/by-endpoint"


def _history(sim: Simulator, headers: dict[str, str] = AUTH, **params: Any) -> httpx.Response:
    params = {"endpoint_id": ENDPOINT_ID, "expand": "payloads", **params}
    return httpx.get(f"{sim.url}{HISTORY}", params=params, headers=headers)


def _items(sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    response = _history(sim, **params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _ids(sim: Simulator, **params: Any) -> list[str]:
    return [i["request_id"] for i in _items(sim, **params)]


def _wait_items(sim: Simulator, count: int, timeout: float = 10.0, **params: Any) -> list[dict[str, Any]]:
    """The items once `count` of them are listed and finished."""
    deadline = time.monotonic() + timeout
    while True:
        items = _items(sim, **params)
        if len(items) >= count and all(i["ended_at"] for i in items):
            return items
        assert time.monotonic() < deadline, f"history never listed {count} finished requests: {items}"
        time.sleep(0.02)


def _submit(sim: Simulator, args: dict[str, Any], **headers: str) -> str:
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=args, headers={**AUTH, **headers})
    return response.json()["request_id"]


def _error(response: httpx.Response, status: int, kind: str) -> str:
    """Assert fal's platform error shape and return its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and isinstance(error["message"], str)
    return error["message"]


def test_queued_request_not_listed_until_started(make_sim, client: fal_client.SyncClient, media):
    """A queued request is not in the history; it is listed, with its exact input, once it starts."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    blocker = submit(client, edit_args(url, prompt="HANG forever"))
    queued_args = edit_args(url, prompt="waits in line", keep_audio=False)
    queued = submit(client, queued_args)
    [running] = _items(sim)
    assert running["request_id"] == blocker.request_id and running["started_at"] and running["sent_at"]
    assert running["ended_at"] is None and running["status_code"] is None and running["json_output"] is None
    blocker.cancel()
    queued.get()
    item = next(i for i in _items(sim) if i["request_id"] == queued.request_id)
    assert item["json_input"] == queued_args and item["endpoint_id"] == ENDPOINT_ID and item["started_at"]


def test_history_lags_behind_the_start(make_sim):
    """A started (even finished) request is listed only history_lag_s after it started."""
    sim = make_sim(history_lag_s=0.6)
    submitted = time.monotonic()
    request_id = _submit(sim, {"prompt": "no video_url: ends as a 422 at once"})
    time.sleep(0.2)
    [row] = httpx.get(f"{sim.url}/_simulator/requests").json()
    assert row["status"] == "COMPLETED" and row["started_at"] and _items(sim) == []  # finished, not listed yet
    [item] = _wait_items(sim, 1)
    assert item["request_id"] == request_id and time.monotonic() - submitted >= 0.6


def test_sorted_by_end_descending_running_first(make_sim, client: fal_client.SyncClient, media):
    """Default order is ended_at descending with running requests (null ended_at) first; sort_by=duration works."""
    sim = make_sim(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    hung = submit(client, edit_args(client.upload_file(media.silent), prompt="HANG"))
    finished = []
    for n in range(3):
        finished.append(_submit(sim, {"prompt": f"invalid {n}"}))
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while sum(1 for i in _items(sim) if i["ended_at"]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    items = _items(sim)
    assert items[0]["request_id"] == hung.request_id and items[0]["ended_at"] is None
    ended = [i["ended_at"] for i in items[1:]]
    assert ended == sorted(ended, reverse=True) and {i["request_id"] for i in items[1:]} == set(finished)
    by_duration = _items(sim, sort_by="duration")
    assert by_duration[0]["request_id"] == hung.request_id
    durations = [i["duration"] for i in by_duration[1:]]
    assert durations == sorted(durations, reverse=True)
    hung.cancel()


def test_store_io_off_hides_payloads(make_sim, client: fal_client.SyncClient, media):
    """With X-Fal-Store-IO: 0 json_input/json_output are null even with expand=payloads, also after a restart."""
    first = make_sim()
    url = client.upload_file(media.silent)
    private = submit(client, edit_args(url, prompt="private"), headers={"X-Fal-Store-IO": "0"})
    stored = submit(client, edit_args(url, prompt="stored"))
    private.get()
    stored.get()
    items = {i["request_id"]: i for i in _items(first)}
    assert items[private.request_id]["json_input"] is None and items[private.request_id]["json_output"] is None
    assert items[stored.request_id]["json_input"]["prompt"] == "stored" and items[stored.request_id]["json_output"]
    assert len(first.ledger()) == 2  # opting out of storage changes nothing about billing
    rows = {r["request_id"]: r for r in httpx.get(f"{first.url}/_simulator/requests").json()}
    assert rows[private.request_id]["store_io"] is False and rows[stored.request_id]["store_io"] is True
    first.stop()
    second = make_sim()
    items = {i["request_id"]: i for i in _items(second)}
    assert items[private.request_id]["json_input"] is None and items[private.request_id]["status_code"] == 200


def test_completed_request_has_status_and_output(sim: Simulator, client: fal_client.SyncClient, media):
    """A finished request shows status_code 200, ended_at, a duration and its result body."""
    url = client.upload_file(media.silent)
    handle = submit(client, edit_args(url))
    result = handle.get()
    [item] = _items(sim)
    assert item["request_id"] == handle.request_id and item["status_code"] == 200
    assert item["ended_at"] and item["started_at"] and item["duration"] > 0
    assert item["json_output"] == result


def test_payloads_only_when_expanded(sim: Simulator):
    """Without expand=payloads the items carry no json_input/json_output."""
    _submit(sim, {"prompt": "x"})
    [item] = _wait_items(sim, 1, expand="")
    assert "json_input" not in item and "json_output" not in item


def test_start_excludes_older_requests(sim: Simulator):
    """Only requests sent at or after `start` (and before `end`) are listed."""
    old = _submit(sim, {"prompt": "old"})
    _wait_items(sim, 1)
    time.sleep(0.05)
    cut = datetime.now(UTC).isoformat()
    new = _submit(sim, {"prompt": "new"})
    _wait_items(sim, 2)
    assert _ids(sim, start=cut) == [new]
    assert _ids(sim, end=cut) == [old]
    assert _ids(sim, start="2000-01-01") == [new, old]


def test_pagination_walks_every_request(sim: Simulator):
    """limit=1 pages through all requests in ended_at order via next_cursor until has_more is false."""
    submitted = [_submit(sim, {"prompt": f"p{n}"}) for n in range(3)]
    expected = [i["request_id"] for i in _wait_items(sim, 3)]
    seen, params = [], {"limit": 1}
    while True:
        page = _history(sim, **params).json()
        seen += [i["request_id"] for i in page["items"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected and set(seen) == set(submitted)


def test_other_key_sees_nothing(sim: Simulator):
    """Requests are listed only to the key that submitted them."""
    _submit(sim, {"prompt": "mine"})
    _wait_items(sim, 1)
    response = _history(sim, headers=OTHER_AUTH)
    assert response.status_code == 200 and response.json() == {"items": [], "next_cursor": None, "has_more": False}


def test_platform_errors_have_fal_shape(sim: Simulator):
    """Missing/invalid keys are 401 authorization_error; bad queries are 400 validation_error naming the field."""
    for headers in ({}, {"Authorization": "Key"}, {"Authorization": "Bearer abc"}):
        _error(_history(sim, headers=headers), 401, "authorization_error")
    missing = httpx.get(f"{sim.url}{HISTORY}", headers=AUTH)
    assert "endpoint_id" in _error(missing, 400, "validation_error")
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"start": "yesterday"},
        {"status": "odd"},
        {"cursor": "!!"},
        {"sort_by": "price"},
    ):
        assert next(iter(params)) in _error(_history(sim, **params), 400, "validation_error"), params
    assert sim.counters()["calls"]["platform"] == 10


def test_platform_http_faults(make_sim):
    """Platform routes take injected 429 (Retry-After), 500 and drops in the platform shape; the fault budget holds."""
    sim = make_sim(faults=FaultConfig(platform=RouteFaults(http_429=1.0, max_count=1), retry_after_s=2))
    limited = _history(sim)
    assert _error(limited, 429, "rate_limited") and limited.headers["retry-after"] == "2"
    assert _history(sim).status_code == 200
    sim.set_faults(FaultConfig(platform=RouteFaults(http_500=1.0)))
    _error(_history(sim), 500, "server_error")
    sim.set_faults(FaultConfig(platform=RouteFaults(ingress_5xx=1.0)))
    ingress = _history(sim)
    assert ingress.status_code in (502, 503) and "nginx" in ingress.text
    sim.set_faults(FaultConfig(platform=RouteFaults(drop=1.0)))
    with pytest.raises(httpx.HTTPError):
        _history(sim)
    faults = sim.counters()["faults"]
    assert faults == {"platform.http_429": 1, "platform.http_500": 1, "platform.ingress_5xx": 1, "platform.drop": 1}


def test_status_and_endpoint_filters(sim: Simulator):
    """status filters finished requests by outcome; a comma list of endpoint ids is accepted."""
    request_id = _submit(sim, {"prompt": "no video_url: ends as a 422"})
    deadline = time.monotonic() + 10
    while not (rejected := _items(sim, status="user_error")):
        assert time.monotonic() < deadline, "request never finished"
        time.sleep(0.02)
    assert [i["request_id"] for i in rejected] == [request_id] and rejected[0]["status_code"] == 422
    assert _items(sim, status="success") == [] and _items(sim, status="error") == []
    assert len(_items(sim, status="success,user_error")) == 1
    assert len(_items(sim, endpoint_id=f"other/app,{ENDPOINT_ID}")) == 1
    assert _items(sim, endpoint_id="other/app") == []


async def test_started_request_found_by_its_payload(sim: Simulator, aclient: fal_client.AsyncClient, media):
    """A request submitted through the async fal_client can be found (adopted) by its exact input payload."""
    args = edit_args(await aclient.upload_file(media.silent), prompt="lost answer")
    handle = await aclient.submit(ENDPOINT_ID, args)
    async with httpx.AsyncClient(headers=AUTH) as http:
        response = await http.get(f"{sim.url}{HISTORY}", params={"endpoint_id": ENDPOINT_ID, "expand": "payloads"})
    assert [i["request_id"] for i in response.json()["items"] if i["json_input"] == args] == [handle.request_id]
    await handle.get()
