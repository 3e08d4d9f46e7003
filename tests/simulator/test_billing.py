"""Platform API money routes: pricing (per-key discounts), estimates, billing events, usage, search; tags."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import Simulator
from klingflow.simulator.auth import DEFAULT_ADMIN_KEY, key_id
from klingflow.simulator.tags import parse_tags
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}
ADMIN = {"Authorization": f"Key {DEFAULT_ADMIN_KEY}"}
DISCOUNTED = {key_id(TEST_FAL_KEY): 20.0}


def _get(sim: Simulator, path: str, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
    return httpx.get(f"{sim.url}/v1/models/{path}", params=params, headers=headers)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind
    return response.json()["error"]["message"]


def _billed(sim: Simulator, client: fal_client.SyncClient, url: str, prompt: str, tags: str | None = None) -> str:
    """A request run to completion (and billed), sent with X-Fal-Tags when given."""
    headers = {**AUTH, **({"X-Fal-Tags": tags} if tags is not None else {})}
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=edit_args(url, prompt=prompt), headers=headers)
    request_id = response.json()["request_id"]
    deadline = time.monotonic() + 30
    while request_id not in {e.request_id for e in sim.ledger()}:
        assert time.monotonic() < deadline, "never billed"
        time.sleep(0.05)
    return request_id


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("klingflow.run=r1,klingflow.job=ab12", {"klingflow.run": "r1", "klingflow.job": "ab12"}),
        (" a=1 , b=2 ", {"a": "1", "b": "2"}),
        ("Upper=1,ok=2", {"ok": "2"}),  # key charset
        ("fal.reserved=1,ok=2", {"ok": "2"}),  # reserved prefix
        (f"{'k' * 65}=1,ok=2", {"ok": "2"}),  # key too long
        (f"k={'v' * 257},ok=2", {"ok": "2"}),  # value too long
        ("novalue,empty=,ok=2", {"ok": "2"}),  # malformed pairs
        (",".join(f"k{i}=v" for i in range(12)), {f"k{i}": "v" for i in range(10)}),  # at most 10
        (",".join(f"k{i}={'v' * 200}" for i in range(6)), {f"k{i}": "v" * 200 for i in range(5)}),  # 1024 bytes
        ("", {}),
        (None, {}),
    ],
)
def test_the_gateway_keeps_only_the_tags_within_fals_limits(header: str | None, kept: dict[str, str]) -> None:
    assert parse_tags(header) == kept


def test_pricing_is_the_list_price_less_the_keys_discount(make_sim) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    body = _ok(_get(sim, "pricing", AUTH, endpoint_id=ENDPOINT_ID))
    assert body == {
        "prices": [{"endpoint_id": ENDPOINT_ID, "unit_price": 0.2688, "unit": "second", "currency": "USD"}],
        "next_cursor": None,
        "has_more": False,
    }
    other = _ok(_get(sim, "pricing", {"Authorization": "Key someone-else"}, endpoint_id=ENDPOINT_ID))
    assert other["prices"][0]["unit_price"] == 0.336
    _error(_get(sim, "pricing", AUTH, endpoint_id="fal-ai/unknown"), 404, "not_found")
    _error(_get(sim, "pricing", AUTH), 400, "validation_error")
    _error(_get(sim, "pricing", {}, endpoint_id=ENDPOINT_ID), 401, "authorization_error")


def test_estimates_by_units_and_by_the_keys_history(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)

    def estimate(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{sim.url}/v1/models/pricing/estimate", json=body, headers=AUTH)

    units = {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 10}}}
    assert _ok(estimate(units)) == {"estimate_type": "unit_price", "total_cost": 2.688, "currency": "USD"}
    calls = {"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"call_quantity": 2}}}
    assert _ok(estimate(calls))["total_cost"] == 2.688  # no history yet: 5 s a call
    _billed(sim, client, client.upload_file(media.clip), "history")  # a 3 s clip: $0.8064
    assert _ok(estimate(calls))["total_cost"] == 1.6128
    _error(estimate({"estimate_type": "unit_price", "endpoints": {}}), 400, "validation_error")
    _error(
        estimate({"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"call_quantity": 1.5}}}),
        400,
        "validation_error",
    )


def test_billing_events_are_the_ledgers_charges_with_fals_fields(
    make_sim, client: fal_client.SyncClient, media
) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    url = client.upload_file(media.clip)
    first = _billed(sim, client, url, "one", tags="klingflow.run=r1,klingflow.job=a")
    second = _billed(sim, client, url, "two", tags="klingflow.run=r2")
    events = _ok(_get(sim, "billing-events", expand="auth_method_structured"))["billing_events"]
    assert [e["request_id"] for e in events] == [second, first]  # newest first
    assert events[1] == {
        "request_id": first,
        "endpoint_id": ENDPOINT_ID,
        "timestamp": events[1]["timestamp"],
        "output_units": 3,
        "unit_price": 0.336,
        "percent_discount": 20.0,
        "cost_subtotal": 1.008,
        "cost_discount": 0.2016,
        "cost_total": 0.8064,
        "cost_estimate_nano_usd": 806400000,
        "auth_method_structured": {"detail": f"Key {key_id(TEST_FAL_KEY)}", "api_key_id": key_id(TEST_FAL_KEY)},
    }
    ledger = {e.request_id: e for e in sim.ledger()}
    assert ledger[first].cost_usd == Decimal("0.8064") and ledger[first].tags == {
        "klingflow.run": "r1",
        "klingflow.job": "a",
    }

    def ids(**params: Any) -> list[str]:
        return [e["request_id"] for e in _ok(_get(sim, "billing-events", **params))["billing_events"]]

    assert ids(request_id=first) == [first]
    assert ids(source="tagged-billed", tag="klingflow.run=r2") == [second]
    assert ids(source="tagged-billed", tag=["klingflow.run=r1", "klingflow.job=a"]) == [first]
    assert ids(api_key_id="someone-else") == []
    assert ids(start="2020-01-01", end="2020-02-01") == []
    page = _ok(_get(sim, "billing-events", limit=1))
    assert page["has_more"] and ids(limit=1, cursor=page["next_cursor"]) == [first]
    _error(_get(sim, "billing-events", start="2026-01-01", end="2026-06-01"), 400, "validation_error")  # > 90 days
    _error(_get(sim, "billing-events", request_id=",".join(f"r{i}" for i in range(51))), 400, "validation_error")
    _error(_get(sim, "billing-events", tag="klingflow.run=r1"), 400, "validation_error")  # tags need the source
    _error(_get(sim, "billing-events", source="tagged-billed"), 400, "validation_error")


def test_billing_and_usage_need_an_admin_key(make_sim) -> None:
    sim = make_sim()
    for route in ("billing-events", "usage"):
        message = _error(_get(sim, route, AUTH), 403, "authorization_error")
        assert "admin" in message
        _error(_get(sim, route, {}), 401, "authorization_error")
    other_admin = make_sim(state_dir=sim.config.state_dir.parent / "other", admin_key_ids=[key_id("mine")])
    _error(_get(other_admin, "billing-events", ADMIN), 403, "authorization_error")
    _ok(_get(other_admin, "billing-events", {"Authorization": "Key mine"}))


def test_events_are_listed_only_after_their_delay_and_tagged_ones_later(
    make_sim, client: fal_client.SyncClient, media
) -> None:
    sim = make_sim(billing_events_delay_s=1.0, tagged_billing_delay_s=1.0)
    request_id = _billed(sim, client, client.upload_file(media.clip), "late", tags="klingflow.run=r")
    tagged = {"source": "tagged-billed", "tag": "klingflow.run=r"}
    assert _ok(_get(sim, "billing-events"))["billing_events"] == []
    time.sleep(1.1)
    assert [e["request_id"] for e in _ok(_get(sim, "billing-events"))["billing_events"]] == [request_id]
    assert _ok(_get(sim, "billing-events", **tagged))["billing_events"] == []
    time.sleep(1.0)
    assert [e["request_id"] for e in _ok(_get(sim, "billing-events", **tagged))["billing_events"]] == [request_id]


def test_usage_buckets_and_summary_add_up_to_the_ledger(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    url = client.upload_file(media.clip)
    for prompt in ("a", "b"):
        _billed(sim, client, url, prompt)
    body = _ok(_get(sim, "usage", expand=["time_series", "summary"], timeframe="day"))
    (summary,) = body["summary"]
    assert summary == {
        "endpoint_id": ENDPOINT_ID,
        "unit": "second",
        "quantity": 6,
        "unit_price": 0.336,
        "percent_discount": 20.0,
        "cost_subtotal": 2.016,
        "cost_discount": 0.4032,
        "cost_total": 1.6128,
        "cost": 1.6128,
        "currency": "USD",
    }
    buckets = body["time_series"]
    assert sum(r["cost_total"] for b in buckets for r in b["results"]) == pytest.approx(1.6128)
    assert all(b["bucket"].endswith("T00:00:00+00:00") for b in buckets)
    _error(_get(sim, "usage", timeframe="fortnight"), 400, "validation_error")


def test_search_finds_the_callers_requests_by_prompt_or_url(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim()
    url = client.upload_file(media.clip)
    snowy = _billed(sim, client, url, "make the street snowy at night")
    _billed(sim, client, client.upload_file(media.silent), "paint it like a watercolour")

    def found(headers: dict[str, str] = AUTH, **params: Any) -> list[str]:
        return [r["request_id"] for r in _ok(_get(sim, "requests/search", headers, **params))["results"]]

    assert found(query="snowy street at night") == [snowy]
    assert found(video_url=url) == [snowy]
    assert found({"Authorization": "Key someone-else"}, query="snowy street at night") == []
    result = _ok(_get(sim, "requests/search", AUTH, video_url=url))["results"][0]
    assert result["status_code"] == 200 and result["similarity"] == 1.0 and result["ended_at"]
    _error(_get(sim, "requests/search", AUTH, query="x", video_url=url), 400, "validation_error")
    _error(_get(sim, "requests/search", AUTH), 400, "validation_error")
