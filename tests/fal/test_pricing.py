"""The run's unit price: fal's for the key (a discount included), cached a day, the list price as fallback."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from klingflow.endpoint import ENDPOINT_ID, PRICE_PER_SECOND_USD
from klingflow.fal.outcomes import Price
from klingflow.fal.pricing import LIST_PRICE, UnitPrice, _per_second, dry_run_price, resolve_price
from klingflow.fal.queue import Backoff, FalQueue, Target
from klingflow.models import JobRecord, PriceSource
from klingflow.simulator import FaultConfig, RouteFaults
from klingflow.simulator.auth import key_id
from tests.conftest import SESSION_KEY

log = logging.getLogger("test")


async def _resolve(sim_url: str, cache: Path) -> UnitPrice:
    async with FalQueue(Target.simulator(sim_url), SESSION_KEY, backoff=Backoff(attempts=2, base_s=0.01)) as fal:
        return await resolve_price(fal, cache, log)


async def test_the_keys_discounted_price_is_read_once_and_cached_for_the_day(
    make_simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_simulator(key_discounts={key_id(SESSION_KEY): 20.0})
    caplog.set_level(logging.INFO, "test")
    price = await _resolve(sim.url, tmp_path / "pricing")
    assert (price.usd_per_second, price.source) == (Decimal("0.2688"), PriceSource.fal)
    assert "-20.0% against the list price" in caplog.text
    calls = sim.counters()["calls"]["platform"]
    again = await _resolve(sim.url, tmp_path / "pricing")
    assert (again.usd_per_second, again.source) == (Decimal("0.2688"), PriceSource.cache)
    assert sim.counters()["calls"]["platform"] == calls  # no second call within the day
    assert (tmp_path / "pricing").stat().st_mode & 0o077 == 0  # the cache is private


async def test_without_a_discount_the_price_is_the_list_price_and_nothing_is_said(
    simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "test")
    price = await _resolve(simulator.url, tmp_path / "pricing")
    assert (price.usd_per_second, price.source) == (PRICE_PER_SECOND_USD, PriceSource.fal)
    assert "list price" not in caplog.text


async def test_a_pricing_api_that_cannot_be_read_falls_back_to_the_list_price_and_says_so(
    make_simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_simulator(faults=FaultConfig(platform=RouteFaults(http_500=1.0)))
    price = await _resolve(sim.url, tmp_path / "pricing")
    assert price == LIST_PRICE
    assert "could not be read" in caplog.text and "HTTP 500" in caplog.text
    sim.set_faults(FaultConfig())
    assert (await _resolve(sim.url, tmp_path / "pricing")).source is PriceSource.fal  # the fallback is not cached


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ([Price(ENDPOINT_ID, Decimal("0.3"), "second", "USD")], Decimal("0.3")),
        ([Price(ENDPOINT_ID, Decimal("0.3"), "seconds", "usd")], Decimal("0.3")),
        ([Price("other/endpoint", Decimal("0.3"), "second", "USD")], None),
        ([Price(ENDPOINT_ID, Decimal("0.3"), "video", "USD")], None),  # per video: not a per-second price
        ([Price(ENDPOINT_ID, Decimal("0.3"), "second", "EUR")], None),
        ([], None),
    ],
)
def test_only_a_usd_price_per_second_of_the_endpoint_is_taken(prices: list[Price], expected: Decimal | None) -> None:
    assert _per_second(prices, ENDPOINT_ID) == expected


async def test_a_dry_run_uses_the_price_read_within_the_day_else_the_list_price(make_simulator, tmp_path: Path) -> None:
    sim = make_simulator(key_discounts={key_id(SESSION_KEY): 20.0})
    cache = tmp_path / "pricing"
    namespace = Target.simulator(sim.url).namespace
    assert dry_run_price(cache, namespace, ENDPOINT_ID, SESSION_KEY, log) == LIST_PRICE
    await _resolve(sim.url, cache)
    cached = dry_run_price(cache, namespace, ENDPOINT_ID, SESSION_KEY, log)
    assert (cached.usd_per_second, cached.source) == (Decimal("0.2688"), PriceSource.cache)
    assert dry_run_price(cache, namespace, ENDPOINT_ID, "another-key", log) == LIST_PRICE  # the price is per key


def test_a_price_prices_an_estimate_and_a_bill() -> None:
    price = UnitPrice(usd_per_second=Decimal("0.2688"), source=PriceSource.fal)
    job = JobRecord(job_id="j", row=1, prompt="p", video="v", estimated_seconds=5)
    estimated = price.estimated(job)
    assert (estimated.estimated_cost_usd, estimated.unit_price_usd, estimated.price_source) == (1.344, 0.2688, "fal")
    assert price.estimated(job.with_(estimated_seconds=None)).estimated_cost_usd is None
    assert price.bill() == {"unit_price_usd": 0.2688, "price_source": PriceSource.fal}
    assert "$0.2688 per generated second (fal's price for this key)" == price.label
