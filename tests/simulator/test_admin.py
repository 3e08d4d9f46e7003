"""Admin routes: health, requests, counters (per route, per request, per key)."""

from __future__ import annotations

import httpx

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import FaultConfig
from tests.simulator.conftest import edit_args, submit


def test_health(sim):
    """GET /_simulator/health answers ok without credentials."""
    assert httpx.get(f"{sim.url}/_simulator/health").json()["status"] == "ok"


def test_counters_match_http_view(sim, client, media):
    """counters() equals GET /_simulator/counters and counts calls, uploads, submits and key peaks."""
    url = client.upload_file(media.silent)
    handle = submit(client, edit_args(url))
    handle.get()
    counters = sim.counters()
    assert counters == httpx.get(f"{sim.url}/_simulator/counters").json()
    assert counters["submits"] == 1 and counters["uploads"] == 1 and counters["billed"] == 1
    assert counters["upload_bytes"] == media.silent.stat().st_size
    per_request = counters["calls_by_request"][handle.request_id]
    assert per_request["status"] >= 1 and per_request["result"] == 1
    assert counters["calls"]["status"] == per_request["status"]
    (key,) = counters["keys"].values()
    assert key == {"submits": 1, "in_flight": 0, "in_progress": 0, "max_in_flight": 1, "max_in_progress": 1}


def test_requests_listing(make_sim, client, media):
    """GET /_simulator/requests lists every request with state, position and timestamps."""
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["HANG"]))
    url = client.upload_file(media.silent)
    hung, queued = submit(client, edit_args(url, prompt="HANG")), submit(client, edit_args(url))
    rows = {r["request_id"]: r for r in httpx.get(f"{sim.url}/_simulator/requests").json()}
    assert rows[queued.request_id]["status"] == "IN_QUEUE" and rows[queued.request_id]["queue_position"] == 0
    assert rows[hung.request_id]["fault"] == "hang" and rows[hung.request_id]["submitted_at"]
    hung.cancel()
    queued.get()


def test_unknown_application_is_404(sim):
    """Submitting to another endpoint id is 404."""
    response = httpx.post(f"{sim.url}/fal-ai/other/model", json={}, headers={"Authorization": "Key k"})
    assert response.status_code == 404
    assert ENDPOINT_ID not in response.text
