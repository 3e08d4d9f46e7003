"""The estimate before any spend: paid rows, identical rows, failed rows and rows still being prepared."""

from __future__ import annotations

from decimal import Decimal

import pytest

from klingflow.endpoint import MAX_DURATION_S
from klingflow.fal.pricing import LIST_PRICE, UnitPrice
from klingflow.models import JobRecord, PriceSource, Stage
from klingflow.pipeline.estimate import estimate

PRICE = UnitPrice(usd_per_second=Decimal("0.2"), source=PriceSource.fal)


def row(n: int, key: str | None, seconds: float | None = 5.0, failed: bool = False) -> JobRecord:
    job = JobRecord(job_id=f"j{n}", row=n, prompt="p", video="v.mp4", job_key=key, estimated_seconds=seconds)
    return job.fail(Stage.preprocess, "bad") if failed else PRICE.estimated(job)


@pytest.mark.parametrize(
    ("rows", "owned", "expected"),
    [
        ([row(1, "a"), row(2, "b")], set(), {"to_pay": 2, "seconds": 10, "total_usd": 2.0}),
        ([row(1, "a"), row(2, "a")], set(), {"to_pay": 1, "identical": 1, "seconds": 5, "total_usd": 1.0}),
        ([row(1, "a"), row(2, "b")], {"a"}, {"to_pay": 1, "already_paid": 1, "total_usd": 1.0}),
        ([row(1, "a"), row(2, None, None, failed=True)], set(), {"to_pay": 1, "failed": 1, "total_usd": 1.0}),
        (
            [row(1, "a"), None],
            set(),
            {"to_pay": 1, "pending": 1, "seconds": 5 + MAX_DURATION_S, "total_usd": 1.0 + 0.2 * MAX_DURATION_S},
        ),
        ([], set(), {"to_pay": 0, "seconds": 0, "total_usd": 0.0}),
    ],
    ids=["two-new", "identical-rows-pay-once", "already-paid", "failed-row", "still-preparing", "empty"],
)
def test_estimate(rows: list[JobRecord | None], owned: set[str], expected: dict[str, float]) -> None:
    figures = estimate(rows, PRICE, owned.__contains__)
    assert figures.model_dump(include=set(expected)) == pytest.approx(expected)


def test_the_text_says_an_upper_bound_and_the_cap() -> None:
    text = estimate([row(1, "a"), None], LIST_PRICE, lambda _: False).text(5.0, 10)
    assert "1 still being prepared after 10 s" in text and "at most $" in text and "(cap $5.00)" in text
    assert "no cap" in estimate([row(1, "a")], LIST_PRICE, lambda _: False).text(None, 10)
