"""What a key pays: the endpoint's list price less the key's discount (fal: "custom pricing or discounts
may be applied based on account status"), and the charge of a number of billed seconds."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from klingflow.endpoint import ENDPOINT_ID, PRICE_PER_SECOND_USD, PRICE_UNIT, cost_usd
from klingflow.simulator.config import SimulatorConfig

PRICES = {ENDPOINT_ID: PRICE_PER_SECOND_USD}  # the endpoints this simulator serves, at their list prices
UNIT = PRICE_UNIT
CURRENCY = "USD"


@dataclass(frozen=True)
class KeyPrice:
    """One key's price of one endpoint."""

    list_price: Decimal
    percent_discount: float | None

    @property
    def unit_price(self) -> Decimal:
        """The price the key pays per unit (what the pricing route answers)."""
        off = Decimal(str(self.percent_discount or 0))
        return (self.list_price * (100 - off) / 100).normalize()

    def charge(self, units: float) -> tuple[Decimal, Decimal]:
        """(subtotal at the list price, total after the discount) for `units`."""
        return cost_usd(units, self.list_price), cost_usd(units, self.unit_price)


def key_price(config: SimulatorConfig, key_id: str, endpoint: str = ENDPOINT_ID) -> KeyPrice:
    """The key's price of an endpoint it may call (KeyError for an endpoint the simulator does not serve)."""
    discount = config.key_discounts.get(key_id) or None
    return KeyPrice(PRICES[endpoint], discount)
