"""Platform API money routes over real HTTP: pricing (per-key discounts), estimates, billing events, usage and
search, with charges made by real jobs through the queue and read back from the ledger."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID, PRICE_PER_SECOND_USD, cost_usd
from klingflow.simulator import FaultConfig, RouteFaults, Simulator
from klingflow.simulator.auth import DEFAULT_ADMIN_KEY, key_id
from klingflow.simulator.ledger import Ledger
from klingflow.simulator.routes_billing import bounded, bucket_start, timeframe_of
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args

AUTH = {"Authorization": f"Key {TEST_FAL_KEY}"}
OTHER_KEY = "another-key-of-the-account"
OTHER = {"Authorization": f"Key {OTHER_KEY}"}
ADMIN = {"Authorization": f"Key {DEFAULT_ADMIN_KEY}"}
MINE, THEIRS = key_id(TEST_FAL_KEY), key_id(OTHER_KEY)
DISCOUNTED = {MINE: 20.0}
DISCOUNTED_PRICE = Decimal("0.2688")  # 0.336 less 20 %


def _get(sim: Simulator, path: str, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
    return httpx.get(f"{sim.url}/v1/models/{path}", params=params, headers=headers)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: httpx.Response, status: int, kind: str) -> str:
    """Assert fal's platform error shape and return its message."""
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]["type"] == kind
    return response.json()["error"]["message"]


def _billed(
    sim: Simulator, url: str, prompt: str, *, tags: str | None = None, headers: dict[str, str] = AUTH, **extra: Any
) -> str:
    """A request submitted through the queue (with X-Fal-Tags when given) and run until the ledger bills it."""
    sent = {**headers, **({"X-Fal-Tags": tags} if tags is not None else {})}
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=edit_args(url, prompt=prompt, **extra), headers=sent)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    deadline = time.monotonic() + 30
    while request_id not in {e.request_id for e in sim.ledger()}:
        assert time.monotonic() < deadline, "never billed"
        time.sleep(0.05)
    return request_id


def _events(sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    return _ok(_get(sim, "billing-events", **params))["billing_events"]


def _ids(sim: Simulator, **params: Any) -> list[str]:
    return [e["request_id"] for e in _events(sim, **params)]


# --- pricing and estimates --------------------------------------------------------------------------
def test_pricing_is_the_list_price_less_the_callers_discount(make_sim) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    assert _ok(_get(sim, "pricing", AUTH, endpoint_id=ENDPOINT_ID)) == {
        "prices": [{"endpoint_id": ENDPOINT_ID, "unit_price": 0.2688, "unit": "second", "currency": "USD"}],
        "next_cursor": None,
        "has_more": False,
    }
    undiscounted = _ok(_get(sim, "pricing", OTHER, endpoint_id=ENDPOINT_ID))["prices"]
    assert undiscounted == [{"endpoint_id": ENDPOINT_ID, "unit_price": 0.336, "unit": "second", "currency": "USD"}]
    # unknown ids are left out (comma list and repeated); none known is 404
    mixed = _ok(_get(sim, "pricing", AUTH, endpoint_id=[f"fal-ai/unknown,{ENDPOINT_ID}", "fal-ai/other"]))
    assert [p["endpoint_id"] for p in mixed["prices"]] == [ENDPOINT_ID]
    _error(_get(sim, "pricing", AUTH, endpoint_id="fal-ai/unknown"), 404, "not_found")
    _error(_get(sim, "pricing", AUTH), 400, "validation_error")
    _error(_get(sim, "pricing", AUTH, endpoint_id=",".join(f"e{i}" for i in range(51))), 400, "validation_error")
    _error(_get(sim, "pricing", {}, endpoint_id=ENDPOINT_ID), 401, "authorization_error")
    _error(_get(sim, "pricing", {"Authorization": "Bearer x"}, endpoint_id=ENDPOINT_ID), 401, "authorization_error")


def test_estimates_by_units_and_by_the_keys_history(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)

    def estimate(body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
        return httpx.post(f"{sim.url}/v1/models/pricing/estimate", json=body, headers=headers)

    units = {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 10}}}
    assert _ok(estimate(units)) == {"estimate_type": "unit_price", "total_cost": 2.688, "currency": "USD"}
    assert _ok(estimate(units, OTHER))["total_cost"] == 3.36  # the list price for an undiscounted key
    half = {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 2.5}}}
    assert _ok(estimate(half))["total_cost"] == 0.672
    calls = {"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"call_quantity": 2}}}
    assert _ok(estimate(calls)) == {"estimate_type": "historical_api_price", "total_cost": 2.688, "currency": "USD"}
    _billed(sim, client.upload_file(media.clip), "history")  # a 3 s clip at 0.2688: $0.8064 a call
    assert _ok(estimate(calls))["total_cost"] == 1.6128
    assert _ok(estimate(calls, OTHER))["total_cost"] == 3.36  # another key has no history: 2 x 5 s x 0.336
    assert _ok(estimate({"estimate_type": "unit_price", "endpoints": {}}))["total_cost"] == 0
    for bad in (
        {"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"call_quantity": 1.5}}},
        {"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"call_quantity": 0}}},
        {"estimate_type": "historical_api_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 3}}},
        {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": "3"}}},
        {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 0}}},
        {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": True}}},
        {"estimate_type": "unit_price", "endpoints": {ENDPOINT_ID: {"unit_quantity": 0.0000001}}},
        {"estimate_type": "unit_price", "endpoints": [ENDPOINT_ID]},
        {"estimate_type": "by_magic", "endpoints": {ENDPOINT_ID: {"unit_quantity": 1}}},
        {"endpoints": {ENDPOINT_ID: {"unit_quantity": 1}}},
        [units],
    ):
        _error(estimate(bad), 400, "validation_error")
    for raw in (
        b"{",
        b'{"estimate_type": "unit_price", "endpoints": {"%s": {"unit_quantity": Infinity}}}' % ENDPOINT_ID.encode(),
    ):
        _error(httpx.post(f"{sim.url}/v1/models/pricing/estimate", content=raw, headers=AUTH), 400, "validation_error")
    unknown = {"estimate_type": "unit_price", "endpoints": {"fal-ai/unknown": {"unit_quantity": 1}}}
    _error(estimate(unknown), 404, "not_found")
    _error(estimate(units, {}), 401, "authorization_error")


# --- the ledger -------------------------------------------------------------------------------------
def test_a_discounted_charge_keeps_the_list_price_and_the_discount(make_sim, media, client) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    url = client.upload_file(media.clip)
    discounted = _billed(sim, url, "discounted")
    listed = _billed(sim, url, "list price", headers=OTHER)
    entries = {e.request_id: e for e in sim.ledger()}
    entry = entries[discounted]
    assert entry.billed_seconds == 3
    assert entry.cost_usd == cost_usd(3, DISCOUNTED_PRICE) == Decimal("0.8064")
    assert (entry.unit_price, entry.percent_discount, entry.cost_subtotal) == (Decimal("0.336"), 20.0, Decimal("1.008"))
    assert entry.cost_discount == Decimal("0.2016")
    plain = entries[listed]  # no discount: billed exactly as before discounts existed
    assert (plain.cost_usd, plain.cost_subtotal, plain.percent_discount) == (cost_usd(3), cost_usd(3), None)
    line = json.loads((sim.config.state_dir / "ledger.jsonl").read_text().splitlines()[0])
    assert {"unit_price", "percent_discount", "cost_subtotal", "tags"} <= set(line)


def test_a_ledger_line_from_before_discounts_loads_as_a_list_price_charge(make_sim) -> None:
    sim = make_sim()
    sim.stop()
    now = datetime.now(UTC)
    old = {
        "request_id": "old-1",
        "endpoint": ENDPOINT_ID,
        "key_id": MINE,
        "input": {"prompt": "p", "video_url": "u"},
        "billed_seconds": 5,
        "cost_usd": "1.68",
        "submitted_at": (now - timedelta(minutes=2)).isoformat(),
        "started_at": (now - timedelta(minutes=2)).isoformat(),
        "completed_at": (now - timedelta(minutes=1)).isoformat(),
    }
    (sim.config.state_dir / "ledger.jsonl").write_text(json.dumps(old) + "\n")
    (entry,) = Ledger(sim.config.state_dir / "ledger.jsonl").entries()
    assert (entry.unit_price, entry.percent_discount, entry.cost_subtotal, entry.tags) == (
        PRICE_PER_SECOND_USD,
        None,
        Decimal("1.68"),
        {},
    )
    restarted = make_sim()
    (event,) = _events(restarted)
    assert event["cost_subtotal"] == event["cost_total"] == 1.68 and event["cost_discount"] == 0


# --- billing events ---------------------------------------------------------------------------------
def test_billing_events_are_the_ledgers_charges_with_fals_fields(make_sim, client: fal_client.SyncClient, media):
    sim = make_sim(key_discounts=DISCOUNTED)
    url = client.upload_file(media.clip)
    first = _billed(sim, url, "one", tags="klingflow.run=r1,klingflow.job=a")
    second = _billed(sim, url, "two", tags="klingflow.run=r2")
    third = _billed(sim, url, "three", headers=OTHER)
    events = _events(sim, expand="auth_method_structured")
    assert [e["request_id"] for e in events] == [third, second, first]  # newest first
    ledger = {e.request_id: e for e in sim.ledger()}
    assert events[2] == {
        "request_id": first,
        "endpoint_id": ENDPOINT_ID,
        "timestamp": ledger[first].completed_at.isoformat(),
        "output_units": 3,
        "unit_price": 0.336,
        "percent_discount": 20.0,
        "cost_subtotal": 1.008,
        "cost_discount": 0.2016,
        "cost_total": 0.8064,
        "cost_estimate_nano_usd": 806_400_000,
        "auth_method_structured": {"detail": f"Key {MINE}", "api_key_id": MINE},
    }
    assert events[0]["percent_discount"] is None and events[0]["cost_discount"] == 0
    assert events[0]["cost_total"] == events[0]["cost_subtotal"] == 1.008
    for event in events:
        assert all(type(event[f]) in (int, float) for f in ("cost_subtotal", "cost_total", "cost_estimate_nano_usd"))
        assert event["cost_estimate_nano_usd"] == round(event["cost_total"] * 1e9)
        assert datetime.fromisoformat(event["timestamp"]) == ledger[event["request_id"]].completed_at
    assert sum(Decimal(str(e["cost_total"])) for e in events) == sum(e.cost_usd for e in ledger.values())
    labels = [e["auth_method"] for e in _events(sim, expand="auth_method")]
    assert labels == [f"Key {THEIRS}", f"Key {MINE}", f"Key {MINE}"]
    assert "auth_method" not in _events(sim)[0]


def test_billing_event_filters(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim()
    url = client.upload_file(media.clip)
    first = _billed(sim, url, "one", tags="klingflow.run=r1,klingflow.job=a")
    second = _billed(sim, url, "two", tags="klingflow.run=r2,klingflow.job=a")
    third = _billed(sim, url, "three", headers=OTHER)
    assert _ids(sim, request_id=first) == [first]
    assert _ids(sim, request_id=[f"{first},nope", third]) == [third, first]
    assert _ids(sim, endpoint_id=ENDPOINT_ID) == [third, second, first]
    assert _ids(sim, endpoint_id="fal-ai/other") == []
    assert _ids(sim, api_key_id=MINE) == [second, first]
    assert _ids(sim, api_key_id=THEIRS) == [third]
    assert _ids(sim, api_key_id="someone-else") == []
    assert _ids(sim, login_username="alice") == []  # every simulator request is made with an API key
    # the tagged source: every tag given must match
    assert _ids(sim, source="tagged-billed", tag="klingflow.run=r2") == [second]
    assert _ids(sim, source="tagged-billed", tag="klingflow.job=a") == [second, first]
    assert _ids(sim, source="tagged-billed", tag=["klingflow.run=r1", "klingflow.job=a"]) == [first]
    assert _ids(sim, source="tagged-billed", tag=["klingflow.run=r1", "klingflow.job=b"]) == []
    assert _ids(sim, source="default") == [third, second, first]
    # the window: [start, end), 24 h back by default
    ended = {e.request_id: e.completed_at for e in sim.ledger()}
    assert _ids(sim, start=ended[second].isoformat()) == [third, second]
    assert _ids(sim, end=ended[second].isoformat()) == [first]
    assert _ids(sim, start="2020-01-01", end="2020-02-01") == []
    day_ago = datetime.now(UTC) - timedelta(days=1, minutes=1)
    assert _ids(sim, start=(day_ago - timedelta(days=89)).isoformat(), end=day_ago.isoformat()) == []  # 89 days: ok
    # pages
    page = _ok(_get(sim, "billing-events", limit=2))
    assert [e["request_id"] for e in page["billing_events"]] == [third, second] and page["has_more"]
    rest = _ok(_get(sim, "billing-events", limit=2, cursor=page["next_cursor"]))
    assert [e["request_id"] for e in rest["billing_events"]] == [first]
    assert rest["has_more"] is False and rest["next_cursor"] is None
    # refused queries
    for bad in (
        {"start": "2026-01-01", "end": "2026-06-01"},  # > 90 days
        {"start": (datetime.now(UTC) - timedelta(days=91)).isoformat()},  # > 90 days up to now
        {"start": "2026-02-01", "end": "2026-01-01"},
        {"start": "yesterday"},
        {"request_id": ",".join(f"r{i}" for i in range(51))},
        {"api_key_id": [f"k{i}" for i in range(51)]},
        {"endpoint_id": [f"e{i}" for i in range(51)]},
        {"tag": "klingflow.run=r1"},  # tags need the tagged source
        {"source": "tagged-billed"},  # which needs a tag
        {"source": "tagged-billed", "tag": "no-equals"},
        {"source": "everything"},
        {"limit": 0},
        {"limit": 10_001},
        {"cursor": "not-a-cursor"},
    ):
        _error(_get(sim, "billing-events", **bad), 400, "validation_error")
    assert len(_events(sim, limit=10_000)) == 3


def test_billing_and_usage_need_an_admin_key(make_sim, tmp_path) -> None:
    sim = make_sim()
    for route in ("billing-events", "usage"):
        assert _error(_get(sim, route, AUTH), 403, "authorization_error") == "This endpoint requires an admin API key"
        assert _error(_get(sim, route, {}), 401, "authorization_error") == "Authentication required"
        _error(_get(sim, route, {"Authorization": "Basic abc"}), 401, "authorization_error")
        _ok(_get(sim, route, ADMIN))
    mine = make_sim(state_dir=tmp_path / "other", admin_key_ids=[key_id("mine"), key_id("ops")])
    _error(_get(mine, "billing-events", ADMIN), 403, "authorization_error")  # the default admin key is replaced
    for key in ("mine", "ops"):
        assert _ok(_get(mine, "usage", {"Authorization": f"Key {key}"}))["has_more"] is False
    assert mine.counters()["calls"]["platform"] == 3


def test_events_are_listed_only_after_their_delay_and_tagged_ones_later(
    make_sim, client: fal_client.SyncClient, media
) -> None:
    sim = make_sim(billing_events_delay_s=1.0, tagged_billing_delay_s=1.0)
    request_id = _billed(sim, client.upload_file(media.clip), "late", tags="klingflow.run=r")
    tagged = {"source": "tagged-billed", "tag": "klingflow.run=r"}
    assert sim.ledger()[0].request_id == request_id  # billed at once...
    assert _events(sim) == []  # ...listed later
    assert _ok(_get(sim, "usage", expand="summary"))["summary"] == []
    time.sleep(1.1)
    assert _ids(sim) == [request_id]
    assert _ok(_get(sim, "usage", expand="summary"))["summary"][0]["quantity"] == 3
    assert _events(sim, **tagged) == []  # the tagged source lags the default one
    time.sleep(1.0)
    assert _ids(sim, **tagged) == [request_id]


def test_platform_faults_hit_the_money_routes_too(make_sim) -> None:
    sim = make_sim(faults=FaultConfig(platform=RouteFaults(http_500=1.0, max_count=1)))
    _error(_get(sim, "pricing", AUTH, endpoint_id=ENDPOINT_ID), 500, "server_error")
    _ok(_get(sim, "pricing", AUTH, endpoint_id=ENDPOINT_ID))
    sim.set_faults(FaultConfig(platform=RouteFaults(http_429=1.0)))
    assert _get(sim, "billing-events").status_code == 429  # faults come before auth, as on every route
    assert sim.counters()["faults"] == {"platform.http_500": 1, "platform.http_429": 1}


# --- usage ------------------------------------------------------------------------------------------
def test_usage_buckets_and_summary_add_up_to_the_ledger(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim(key_discounts=DISCOUNTED)
    url = client.upload_file(media.clip)
    for prompt in ("a", "b"):
        _billed(sim, url, prompt)
    _billed(sim, url, "c", headers=OTHER)
    body = _ok(_get(sim, "usage", expand=["time_series", "summary"], timeframe="day"))
    assert set(body) == {"time_series", "summary", "next_cursor", "has_more"}
    discounted = {
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
    listed = discounted | {"quantity": 3, "percent_discount": None, "cost_subtotal": 1.008}
    listed |= {"cost_discount": 0, "cost_total": 1.008, "cost": 1.008}
    assert body["summary"] == [listed, discounted]  # a row per unit price and discount
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    buckets = body["time_series"]
    assert all(datetime.fromisoformat(b["bucket"]) in (today, today - timedelta(days=1)) for b in buckets)
    assert all(b["bucket"].endswith("T00:00:00+00:00") for b in buckets)
    total = sum(Decimal(str(r["cost_total"])) for b in buckets for r in b["results"])
    assert total == sum(e.cost_usd for e in sim.ledger()) == Decimal("2.6208")
    hours = _ok(_get(sim, "usage"))["time_series"]  # the default window, 24 h: auto hour buckets
    assert all(datetime.fromisoformat(b["bucket"]).minute == 0 for b in hours)
    assert sum(r["quantity"] for b in hours for r in b["results"]) == 9
    assert "summary" not in _ok(_get(sim, "usage"))
    by_key = _ok(_get(sim, "usage", expand=["summary", "auth_method"]))
    assert sorted(r["auth_method"] for r in by_key["summary"]) == sorted([f"Key {MINE}", f"Key {THEIRS}"])
    assert _ok(_get(sim, "usage", expand="summary", api_key_id=MINE))["summary"] == [discounted]
    assert _ok(_get(sim, "usage", expand="summary", endpoint_id="fal-ai/other"))["summary"] == []
    assert _ok(_get(sim, "usage", expand="summary", login_username="alice"))["summary"] == []
    for bad in (
        {"timeframe": "fortnight"},
        {"expand": "auth_method"},  # at least one of time_series and summary
        {"timezone": "Mars/Olympus_Mons"},
        {"bound_to_timeframe": "maybe"},
        {"start": "2026-02-01", "end": "2026-01-01"},
        {"api_key_id": [f"k{i}" for i in range(51)]},
    ):
        _error(_get(sim, "usage", **bad), 400, "validation_error")


def test_usage_buckets_follow_the_timeframe_and_timezone(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim()
    _billed(sim, client.upload_file(media.clip), "a")
    billed_at = sim.ledger()[0].completed_at

    def buckets(**params: Any) -> list[datetime]:
        series = _ok(_get(sim, "usage", **params))["time_series"]
        assert [r["quantity"] for b in series for r in b["results"]] == [3]
        return [datetime.fromisoformat(b["bucket"]) for b in series]

    assert buckets(timeframe="minute") == [billed_at.replace(second=0, microsecond=0)]
    (week,) = buckets(timeframe="week")
    assert week.weekday() == 0 and week.time() == datetime.min.time() and billed_at - week < timedelta(days=7)
    (month,) = buckets(timeframe="month")
    assert (month.day, month.month, month.hour) == (1, billed_at.month, 0)
    new_york = ZoneInfo("America/New_York")
    (local,) = buckets(timeframe="day", timezone="America/New_York")
    assert local.utcoffset() == billed_at.astimezone(new_york).utcoffset() != timedelta(0)
    assert local.hour == 0 and local.date() == billed_at.astimezone(new_york).date()
    # not capped at 90 days like billing events; 200 days: auto month buckets
    (auto,) = buckets(start=(datetime.now(UTC) - timedelta(days=200)).isoformat())
    assert auto.day == 1
    # bound_to_timeframe=false keeps the exact window: an end just before the charge leaves it out
    exact = {"timeframe": "day", "end": (billed_at - timedelta(microseconds=1)).isoformat()}
    assert _ok(_get(sim, "usage", bound_to_timeframe="false", **exact))["time_series"] == []
    assert len(_ok(_get(sim, "usage", **exact))["time_series"]) == 1  # bounded: the end moves to the next day


@pytest.mark.parametrize(
    ("span", "timeframe"),
    [
        (timedelta(hours=1, minutes=59), "minute"),
        (timedelta(hours=2), "hour"),
        (timedelta(days=1, hours=23), "hour"),
        (timedelta(days=2), "day"),
        (timedelta(days=63), "day"),
        (timedelta(days=64), "week"),
        (timedelta(days=182), "week"),
        (timedelta(days=183), "month"),
    ],
)
def test_usage_timeframe_is_auto_detected_as_fal_documents(span: timedelta, timeframe: str) -> None:
    end = datetime(2025, 6, 1, tzinfo=UTC)
    assert timeframe_of(None, end - span, end) == timeframe
    assert timeframe_of("minute", end - span, end) == "minute"


def test_bound_to_timeframe_widens_the_window_to_whole_buckets() -> None:
    start, end = datetime(2025, 1, 15, 10, 30, tzinfo=UTC), datetime(2025, 1, 17, 8, 0, tzinfo=UTC)
    assert bounded(start, end, "day", UTC) == (datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 1, 18, tzinfo=UTC))
    assert bounded(start, datetime(2025, 1, 17, tzinfo=UTC), "day", UTC)[1] == datetime(2025, 1, 17, tzinfo=UTC)
    assert bounded(start, end, "month", UTC) == (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
    december = datetime(2025, 12, 3, tzinfo=UTC)
    assert bounded(december, december + timedelta(hours=1), "month", UTC)[1] == datetime(2026, 1, 1, tzinfo=UTC)
    assert bucket_start(datetime(2025, 1, 15, 10, 30, tzinfo=UTC), "week", UTC) == datetime(2025, 1, 13, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    assert bucket_start(datetime(2025, 1, 15, 23, 30, tzinfo=UTC), "day", berlin) == datetime(
        2025, 1, 16, tzinfo=berlin
    )


# --- search -----------------------------------------------------------------------------------------
def test_search_finds_the_callers_requests_by_prompt_or_url(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim()
    clip, silent, image = (client.upload_file(p) for p in (media.clip, media.silent, media.image))
    snowy = _billed(sim, clip, "make the street snowy at night")
    painted = _billed(sim, silent, "paint the street like a watercolour", image_urls=[image])
    theirs = _billed(sim, clip, "make the street snowy at night", headers=OTHER)

    def search(headers: dict[str, str] = AUTH, **params: Any) -> list[dict[str, Any]]:
        return _ok(_get(sim, "requests/search", headers, **params))["results"]

    def found(headers: dict[str, str] = AUTH, **params: Any) -> list[str]:
        return [r["request_id"] for r in search(headers, **params)]

    (hit,) = search(query="snowy night")
    assert set(hit) == {"request_id", "endpoint_id", "started_at", "sent_at", "ended_at"} | {
        "status_code",
        "duration",
        "similarity",
    }
    assert (hit["request_id"], hit["endpoint_id"], hit["status_code"], hit["similarity"]) == (
        snowy,
        ENDPOINT_ID,
        200,
        1.0,
    )
    assert hit["duration"] > 0 and hit["ended_at"] >= hit["started_at"] >= hit["sent_at"]
    assert found(query="street") == [painted, snowy]  # equal scores: newest first
    assert [r["similarity"] for r in search(query="snowy street in daylight")] == [0.5]  # 2 of its 4 words
    assert found(query="snowy street in daylight", min_similarity=0.6) == []
    assert found(query="rainy morning") == []  # below the default min_similarity of 0.3
    assert found(query="rainy morning", min_similarity=0) == [painted, snowy]
    assert found(image_url=image) == [painted]
    assert found(image_url="https://example.invalid/other.png") == []
    # video_url: min_similarity does not apply (fal), so every request is ranked, the exact match first
    assert [(r["request_id"], r["similarity"]) for r in search(video_url=clip)] == [(snowy, 1.0), (painted, 0.0)]
    output_url = httpx.get(f"{sim.url}/{ENDPOINT_ID}/requests/{snowy}", headers=AUTH).json()["video"]["url"]
    assert found(video_url=output_url)[0] == snowy
    # a filtered browse: no query, newest first, no similarity
    browse = search()
    assert [r["request_id"] for r in browse] == [painted, snowy] and "similarity" not in browse[0]
    assert found(endpoint_id=ENDPOINT_ID) == [painted, snowy] == found(endpoint=ENDPOINT_ID)
    assert found(endpoint_id="fal-ai/other") == [] == found(endpoint_id="fal-ai/other", endpoint=ENDPOINT_ID)
    assert found(only_api_requests="true") == [painted, snowy]
    assert found(exclude_api_requests="true") == []  # every simulator request came through the API
    page = _ok(_get(sim, "requests/search", AUTH, limit=1))
    assert page["has_more"] and found(limit=1, cursor=page["next_cursor"]) == [snowy]
    assert found(OTHER, query="snowy street") == [theirs]  # each key sees its own requests only
    for bad in (
        {"query": "x", "video_url": clip},
        {"query": "x", "image_url": image},
        {"image_url": image, "video_url": clip},
        {"only_api_requests": "true", "exclude_api_requests": "true"},
        {"only_api_requests": "perhaps"},
        {"query": "x", "min_similarity": 1.5},
        {"query": "x", "min_similarity": "high"},
        {"endpoint_id": [f"e{i}" for i in range(51)]},
    ):
        _error(_get(sim, "requests/search", AUTH, **bad), 400, "validation_error")
    _error(_get(sim, "requests/search", {}, query="x"), 401, "authorization_error")


def test_search_lists_a_request_only_once_it_started(make_sim, client: fal_client.SyncClient, media) -> None:
    sim = make_sim(concurrency_per_key=1, faults=FaultConfig(hang_prompts_containing=["hang"]))
    url = client.upload_file(media.clip)
    for prompt in ("hang first", "queued behind it"):
        response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json=edit_args(url, prompt=prompt), headers=AUTH)
        assert response.status_code == 200
    deadline = time.monotonic() + 10
    while not (results := _ok(_get(sim, "requests/search", AUTH))["results"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (running,) = results  # the queued request has not started: not in the history yet
    assert running["ended_at"] is None and running["status_code"] is None and running["duration"] is None
