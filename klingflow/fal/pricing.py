"""The endpoint's unit price as fal charges this account, read once a day from fal's pricing API.

fal's Platform API (`GET /v1/models/pricing`) answers with the price for the caller's key: "custom
pricing or discounts may be applied based on account status", so the documented list price
(klingflow.endpoint.PRICE_PER_SECOND_USD) is only the fallback, used when fal's answer cannot be read
or is not a USD price per second. A price fal gave is kept a day in the state dir (JSON, private), per
backend, endpoint and key, so a run costs one call a day; the estimate, the budget and every cost
of the run use the one price resolved at its start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from klingflow.cachedir import open_json_cache
from klingflow.endpoint import PRICE_PER_SECOND_USD, PRICE_UNIT, cost_usd
from klingflow.errors import FalError
from klingflow.fal.backend import Logger, key_fingerprint
from klingflow.fal.outcomes import Price
from klingflow.fal.queue import FalQueue
from klingflow.models import JobRecord, PriceSource

PRICE_TTL_S = 24 * 3600.0
SECOND_UNITS = frozenset({PRICE_UNIT, "seconds", "s", "sec", "video second", "video seconds"})


class UnitPrice(BaseModel):
    """Dollars per billed second, and where that figure comes from."""

    model_config = ConfigDict(frozen=True)

    usd_per_second: Decimal
    source: PriceSource
    read_at: datetime | None = None  # when fal answered it (None for the list price)

    def cost(self, seconds: float) -> float:
        """Dollars for `seconds` billed at this price (to a hundredth of a cent)."""
        return float(cost_usd(seconds, self.usd_per_second))

    def estimated(self, job: JobRecord) -> JobRecord:
        """The job with its estimated cost at this price, and the price (a job not yet estimated passes through)."""
        if job.estimated_seconds is None:
            return job
        return job.with_(estimated_cost_usd=self.cost(job.estimated_seconds), **self.bill())

    def bill(self) -> dict[str, object]:
        """The price fields of a row whose cost is computed at this price."""
        return {"unit_price_usd": float(self.usd_per_second), "price_source": self.source}

    @property
    def label(self) -> str:
        """How the estimate and the report say it: '$0.2688 per second (fal's price for this key)'."""
        where = {
            PriceSource.fal: "fal's price for this key",
            PriceSource.cache: "fal's price for this key, read within the day",
            PriceSource.list_price: "the list price: fal's could not be read",
        }[self.source]
        return f"${self.usd_per_second} per generated second ({where})"


LIST_PRICE = UnitPrice(usd_per_second=PRICE_PER_SECOND_USD, source=PriceSource.list_price)


def cache_key(namespace: str, endpoint: str, key: str) -> str:
    """One cached price per backend, endpoint and key (a discount is per account; the key itself is not kept)."""
    return f"price|{namespace}|{endpoint}|{key_fingerprint(key)}"


def cached_price(cache_dir: Path, namespace: str, endpoint: str, key: str) -> UnitPrice | None:
    """The price a run read less than a day ago, or None."""
    with open_json_cache(cache_dir) as cache:
        raw = cache.get(cache_key(namespace, endpoint, key))
    if not isinstance(raw, dict):
        return None
    try:
        return UnitPrice(
            usd_per_second=Decimal(raw["usd_per_second"]), source=PriceSource.cache, read_at=raw["read_at"]
        )
    except (KeyError, ArithmeticError, ValueError):
        return None


def _per_second(prices: list[Price], endpoint: str) -> Decimal | None:
    """The endpoint's USD price per second in fal's answer (None: absent, another currency or unit)."""
    for price in prices:
        if price.endpoint_id == endpoint and price.currency.upper() == "USD" and price.unit.lower() in SECOND_UNITS:
            return price.unit_price
    return None


def dry_run_price(cache_dir: Path, namespace: str, endpoint: str, key: str | None, logger: Logger) -> UnitPrice:
    """A dry run sends fal nothing: the price a run read within the day, else the list price."""
    cached = cached_price(cache_dir, namespace, endpoint, key) if key else None
    if cached is None:
        logger.info("dry run: no price read from fal within the day, so the estimate uses %s", LIST_PRICE.label)
        return LIST_PRICE
    return _announced(cached, logger)


async def resolve_price(fal: FalQueue, cache_dir: Path, logger: Logger) -> UnitPrice:
    """The run's unit price: cached within the day, else read from fal, else the list price (said why)."""
    cached = cached_price(cache_dir, fal.namespace, fal.endpoint, fal.key)
    if cached is not None:
        return _announced(cached, logger)
    try:
        prices = await fal.prices()
    except FalError as exc:
        logger.warning("fal's pricing API could not be read (%s); costs use %s", exc, LIST_PRICE.label)
        return LIST_PRICE
    per_second = _per_second(prices, fal.endpoint)
    if per_second is None:
        found = ", ".join(f"{p.unit_price} {p.currency}/{p.unit} for {p.endpoint_id}" for p in prices) or "nothing"
        logger.warning("fal's pricing API gave %s, not a USD price per second; costs use %s", found, LIST_PRICE.label)
        return LIST_PRICE
    price = UnitPrice(usd_per_second=per_second, source=PriceSource.fal, read_at=datetime.now(UTC))
    with open_json_cache(cache_dir) as cache:
        value = {"usd_per_second": str(per_second), "read_at": price.read_at.isoformat() if price.read_at else None}
        cache.set(cache_key(fal.namespace, fal.endpoint, fal.key), value, expire=PRICE_TTL_S)
    return _announced(price, logger)


def _announced(price: UnitPrice, logger: Logger) -> UnitPrice:
    """Say the price when it is not the list price (a discount, or a price change the constant misses)."""
    if price.usd_per_second != PRICE_PER_SECOND_USD:
        change = (price.usd_per_second / PRICE_PER_SECOND_USD - 1) * 100
        logger.info(
            "unit price %s, %+.1f%% against the list price of $%s: the estimate, the budget and the costs use it",
            price.label,
            change,
            PRICE_PER_SECOND_USD,
        )
    return price
