"""What a run will cost before anything is paid: one pure function the run and `klingflow validate` share.

Rows already paid for cost nothing (unless forced), rows identical to another row are paid once, rows that
failed before submission cost nothing, and rows still being prepared count at the endpoint's longest output,
so the figure is then an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from klingflow.endpoint import MAX_DURATION_S
from klingflow.fal.pricing import UnitPrice
from klingflow.models import JobRecord


class Estimate(BaseModel):
    """The estimate's figures; `text` is how the run log, the artifact and `validate` say it."""

    to_pay: int
    already_paid: int
    identical: int
    failed: int
    pending: int
    seconds: float
    total_usd: float
    price_label: str

    def text(self, max_budget_usd: float | None, wait_s: float) -> str:
        cap = "no cap" if max_budget_usd is None else f"cap ${max_budget_usd:.2f}"
        waiting = (
            f", {self.pending} still being prepared after {wait_s:g} s (counted at {MAX_DURATION_S:.0f} s "
            "each, so the total is an upper bound)"
            if self.pending
            else ""
        )
        return (
            f"estimate: {self.to_pay} job(s) to pay for ({self.already_paid} already paid, {self.identical} identical "
            f"to another row, {self.failed} failed before submission{waiting}), {self.seconds:g} output second(s), "
            f"{'at most ' if self.pending else ''}${self.total_usd:.2f} ({cap}); price {self.price_label}"
        )


def estimate(rows: list[JobRecord | None], price: UnitPrice, paid: Callable[[str], bool]) -> Estimate:
    """The cost of the rows (None: still being prepared) at `price`; `paid(job_key)` says a result is owned."""
    jobs = [j for j in rows if j is not None]
    pending = len(rows) - len(jobs)
    ready = [j for j in jobs if j.ok]
    keys = {j.job_key for j in ready if j.job_key}
    owned = {k for k in keys if paid(k)}
    to_pay = {j.job_key: j for j in ready if j.job_key not in owned}  # identical rows are paid once
    seconds = sum(j.estimated_seconds or 0 for j in to_pay.values()) + pending * int(MAX_DURATION_S)
    bound = pending * price.cost(MAX_DURATION_S)
    return Estimate(
        to_pay=len(to_pay),
        already_paid=len(owned),
        identical=len(ready) - len(keys),
        failed=len(jobs) - len(ready),
        pending=pending,
        seconds=seconds,
        total_usd=round(sum(j.estimated_cost_usd or 0.0 for j in to_pay.values()) + bound, 4),
        price_label=price.label,
    )
