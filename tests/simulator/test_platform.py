"""Platform request history (GET /v1/models/requests/by-endpoint) and klingflow's lookup through it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import fal_client
import httpx

from klingflow.endpoint import ENDPOINT_ID
from klingflow.fal.backend import BackendSession
from klingflow.fal.history import find_request, payload_sha256
from klingflow.models import Backend
from klingflow.simulator import FaultConfig, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args, submit

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}
OTHER_AUTH = {"Authorization": "Key another-key:not-a-secret"}


def _history(sim: Simulator, headers: dict[str, str] = AUTH, **params: Any) -> httpx.Response:
    params = {"endpoint_id": ENDPOINT_ID, "expand": "payloads", **params}
    return httpx.get(f"{sim.url}/v1/models/requests/by-endpoint", params=params, headers=headers)


def _items(sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    response = _history(sim, **params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _submit(sim: Simulator, args: dict[str, Any]) -> str:
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=args, headers=AUTH)
    return response.json()["request_id"]


def test_queued_request_listed_with_input(make_sim, client: fal_client.SyncClient, media):
    """A request still waiting in the queue is listed with its exact input and no end yet."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    submit(client, edit_args(url, prompt="HANG forever"))
    queued = edit_args(url, prompt="waits in line", duration="5")
    request_id = submit(client, queued).request_id
    item = next(i for i in _items(sim) if i["request_id"] == request_id)
    assert item["json_input"] == queued and item["endpoint_id"] == ENDPOINT_ID
    assert item["ended_at"] is None and item["status_code"] is None and item["started_at"] is None
    assert item["json_output"] is None and item["sent_at"]


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
    [item] = _items(sim, expand="")
    assert "json_input" not in item and "json_output" not in item


def test_start_excludes_older_requests(sim: Simulator):
    """Only requests sent at or after `start` are listed."""
    old = _submit(sim, {"prompt": "old"})
    time.sleep(0.05)
    cut = datetime.now(UTC).isoformat()
    new = _submit(sim, {"prompt": "new"})
    assert [i["request_id"] for i in _items(sim, start=cut)] == [new]
    assert [i["request_id"] for i in _items(sim, end=cut)] == [old]
    assert [i["request_id"] for i in _items(sim, start="2000-01-01")] == [new, old]


def test_pagination_walks_every_request_newest_first(sim: Simulator):
    """limit=1 pages through all requests, newest first, via next_cursor until has_more is false."""
    submitted = [_submit(sim, {"prompt": f"p{n}"}) for n in range(3)]
    seen, params = [], {"limit": 1}
    while True:
        page = _history(sim, **params).json()
        seen += [i["request_id"] for i in page["items"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert seen == submitted[::-1]


def test_other_key_sees_nothing(sim: Simulator):
    """Requests are listed only to the key that submitted them."""
    _submit(sim, {"prompt": "mine"})
    response = _history(sim, headers=OTHER_AUTH)
    assert response.status_code == 200 and response.json() == {"items": [], "next_cursor": None, "has_more": False}


def test_missing_key_is_401(sim: Simulator):
    """Without `Authorization: Key ...` the history is refused with 401."""
    assert _history(sim, headers={}).status_code == 401


def test_missing_endpoint_id_is_422(sim: Simulator):
    """Without endpoint_id the answer is a fal-style 422 naming the query field."""
    response = httpx.get(f"{sim.url}/v1/models/requests/by-endpoint", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "endpoint_id"]


def test_bad_parameters_are_422(sim: Simulator):
    """Out-of-range limit, unparsable start, unknown status and a garbage cursor are rejected."""
    for params in ({"limit": 0}, {"limit": 101}, {"start": "yesterday"}, {"status": "odd"}, {"cursor": "!!"}):
        assert _history(sim, **params).status_code == 422, params


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


async def test_find_request_adopts_submitted_request(sim: Simulator, media):
    """klingflow's find_request locates a request by the hash of its input payload."""
    aclient = fal_client.AsyncClient(key=TEST_FAL_KEY)
    session = BackendSession(kind=Backend.simulator, base_url=sim.url, key=TEST_FAL_KEY, client=aclient)
    since = time.time()
    args = edit_args(await aclient.upload_file(media.silent), prompt="lost answer")
    handle = await aclient.submit(ENDPOINT_ID, args)
    assert await find_request(session, ENDPOINT_ID, payload_sha256(args), since) == handle.request_id
    assert await find_request(session, ENDPOINT_ID, payload_sha256({**args, "prompt": "other"}), since) is None
