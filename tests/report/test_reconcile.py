"""The report beside fal's billing events: the pure matching, its table, and the reports it rewrites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from klingflow.fal.outcomes import BillingEvent
from klingflow.models import CostSource
from klingflow.report.html import render_html
from klingflow.report.reconcile import (
    RECONCILIATION_SCHEMA,
    ChargeStatus,
    apply_to_reports,
    charges_table,
    duplicates,
    problems,
    read_reconciliation,
    reconcile,
    reconciliation_view,
    totals_by,
    write_reconciliation,
)
from klingflow.report.writer import read_history
from tests.report.test_support import failed, succeeded, write_run

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _event(request_id: str, cost: str, units: float = 5.0) -> BillingEvent:
    return BillingEvent(request_id, "e", NOW, units, Decimal("0.336"), None, Decimal(cost))


def _report(rows: list[dict]) -> pd.DataFrame:
    base = {"run_id": "run-1", "job_id": "j", "row": 1, "job_key": "k", "cost_source": "header"}
    return pd.DataFrame([{**base, **r} for r in rows])


@pytest.mark.parametrize(
    ("row", "event", "status"),
    [
        ({"request_id": "r1", "cost_usd": 1.68}, _event("r1", "1.68"), ChargeStatus.matched),
        ({"request_id": "r1", "cost_usd": 1.68}, _event("r1", "1.685"), ChargeStatus.matched),  # within a cent
        ({"request_id": "r1", "cost_usd": 1.68}, _event("r1", "1.344"), ChargeStatus.difference),  # a discount
        ({"request_id": "r1", "cost_usd": None}, _event("r1", "1.008"), ChargeStatus.difference),  # billed cancel
        ({"request_id": "r1", "cost_usd": 1.68}, None, ChargeStatus.not_billed),  # events come late
        ({"request_id": "r1", "cost_usd": None}, None, ChargeStatus.matched),  # neither billed it
        ({"request_id": "r1", "cost_usd": 0.0}, None, ChargeStatus.matched),
    ],
)
def test_a_paying_row_is_matched_to_its_event(row: dict, event: BillingEvent | None, status: ChargeStatus) -> None:
    (charge,) = reconcile(_report([row]), [event] if event else [], {})
    assert (charge.request_id, charge.status, charge.run_id, charge.job_id) == ("r1", status, "run-1", "j")
    assert (charge.status in {ChargeStatus.difference, ChargeStatus.not_billed}) == bool(problems([charge]))


def test_a_charge_no_row_pays_is_unexpected_and_attributed_to_the_run_whose_tag_found_it() -> None:
    report = _report([{"request_id": "r1", "cost_usd": 1.68}])
    charges = reconcile(report, [_event("r1", "1.68"), _event("dup", "1.68")], {"dup": "run-1"})
    by_id = {c.request_id: c for c in charges}
    assert by_id["r1"].status is ChargeStatus.matched
    assert by_id["dup"].status is ChargeStatus.unexpected and by_id["dup"].run_id == "run-1"
    assert by_id["dup"].difference_usd == Decimal("1.68") and "dup" in by_id["dup"].note
    assert [c.request_id for c in problems(charges)] == ["dup"]


def test_a_job_key_fal_billed_twice_is_a_duplicate_whoever_sent_the_second_request() -> None:
    """Two billed requests tagged with one job (this report pays one, another machine's report the other): the
    job is named with its rows' job ids and both charges; one billed request (the other adopted) is not."""
    report = _report(
        [
            {"job_id": "a", "job_key": "k1" * 8, "request_id": "mine", "cost_usd": 1.008},
            {"job_id": "b", "job_key": "k2" * 8, "request_id": "theirs-adopted", "cost_source": "reused"},
        ]
    )
    by_job = {
        "k1" * 8: [_event("elsewhere", "1.008"), _event("mine", "1.008")],
        "k2" * 8: [_event("theirs-adopted", "1.008")],
        "k3" * 8: [_event("x", "1.0"), _event("y", "1.0")],  # not a job of these reports: never asked for
    }
    (dup, other) = duplicates(report, by_job)
    assert (dup.job_key, dup.job_ids, set(dup.request_ids)) == ("k1" * 8, ("a",), {"mine", "elsewhere"})
    assert dup.reported == {"mine"} and dup.extra_usd == Decimal("1.008")
    assert other.job_key == "k3" * 8 and other.job_ids == ()
    unbilled = {"k1" * 8: [_event("mine", "1.008"), _event("cancelled-queued", "0")]}
    assert duplicates(report, unbilled) == []  # a request fal did not charge is not a second payment


def test_reused_rows_do_not_pay_so_their_request_is_not_counted_twice() -> None:
    report = _report(
        [
            {"request_id": "r1", "cost_usd": 1.68, "job_id": "first"},
            {"request_id": "r1", "cost_usd": 0.0, "job_id": "again", "cost_source": "reused"},
            {"request_id": None, "cost_usd": None, "job_id": "never-sent"},
        ]
    )
    (charge,) = reconcile(report, [_event("r1", "1.68")], {})
    assert (charge.job_id, charge.status) == ("first", ChargeStatus.matched)


def test_the_table_has_the_schema_and_each_requests_newest_reconciliation_is_read(tmp_path: Path) -> None:
    report = _report([{"request_id": "r1", "cost_usd": 1.68}])
    first = reconcile(report, [], {})
    write_reconciliation(charges_table(first, NOW), tmp_path, NOW)
    second = reconcile(report, [_event("r1", "1.68"), _event("dup", "2.00")], {"dup": "run-1"})
    later = NOW + timedelta(minutes=5)
    path = write_reconciliation(charges_table(second, later), tmp_path, later)
    assert pq.read_schema(path).equals(RECONCILIATION_SCHEMA, check_metadata=True)
    newest = read_reconciliation(tmp_path).set_index("request_id")
    assert newest.loc["r1", "status"] == "matched" and newest.loc["dup", "status"] == "unexpected"
    (run,) = totals_by(newest.reset_index(), "run_id")
    assert run == {
        "run_id": "run-1",
        "requests": 2,
        "fal_cost_usd": 3.68,
        "report_cost_usd": 1.68,
        "difference_usd": 2.0,
        "problems": 1,
        "unexpected": 1,
    }
    (day,) = totals_by(newest.reset_index(), "day")
    assert day["day"] == "2026-12-03" and day["fal_cost_usd"] == 3.68
    view = reconciliation_view(tmp_path, ["run-1"])
    assert view is not None and view.fal_cost_usd == 3.68 and [p["request_id"] for p in view.problems] == ["dup"]
    assert reconciliation_view(tmp_path, ["another-run"]) is None


def test_billed_rows_of_the_report_carry_fals_charge_and_reused_ones_stay(tmp_path: Path) -> None:
    paid = succeeded("paid", 1).with_(request_id="r1")
    reused = succeeded("reused", 2).with_(request_id="r1", reused=True, cost_usd=0.0, cost_source=CostSource.reused)
    write_run(tmp_path, "run-1", [paid, reused, failed("failed", 3)], backend="fal")
    history = read_history(tmp_path)
    charges = reconcile(history, [_event("r1", "1.344")], {})  # fal gave a discount the run did not know
    assert [c.status for c in charges] == [ChargeStatus.difference]
    apply_to_reports(tmp_path, history, charges)
    after = read_history(tmp_path).set_index("job_id")
    assert (after.loc["paid", "cost_usd"], after.loc["paid", "cost_source"]) == (1.344, "billing_event")
    assert (after.loc["reused", "cost_usd"], after.loc["reused", "cost_source"]) == (0.0, "reused")
    assert pd.isna(after.loc["failed", "cost_usd"]) and len(after) == 3
    assert [c.status for c in reconcile(read_history(tmp_path), [_event("r1", "1.344")], {})] == ["matched"]


def test_the_html_report_shows_fals_bill_and_the_charges_that_do_not_match(tmp_path: Path) -> None:
    write_run(tmp_path, "run-1", [succeeded("paid", 1).with_(request_id="r1")], backend="fal")
    history = read_history(tmp_path)
    charges = reconcile(history, [_event("r1", "1.68"), _event("dup-request", "1.68")], {"dup-request": "run-1"})
    write_reconciliation(charges_table(charges, NOW), tmp_path, NOW)
    html = render_html(history, title="t", thumbnails=False, reconciliation=reconciliation_view(tmp_path, ["run-1"]))
    section = html.split("<h2>fal's bill</h2>", 1)[1].split("<h2>", 1)[0]
    assert "$3.36" in section and "dup-request" in section and "unexpected" in section
    assert "fal's bill" not in render_html(history, title="t", thumbnails=False)
