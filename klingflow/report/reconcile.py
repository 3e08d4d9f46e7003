"""The report beside fal's own bill: every charge fal made, matched to the report row that pays it.

`reconcile` is pure (table-tested): given the report rows of some runs and fal's billing events of
their requests (asked by request id) and of their tags (`klingflow.run=<run id>`: requests klingflow
sent, whether or not it learnt their ids), each request gets one `Charge`:

- matched:     fal's charge and the report's cost agree within a cent (both may be 0: not billed);
- difference:  they differ by more than a cent (fal billed a cancel or a 422 the report did not, a price
               the run did not know, ...);
- unexpected:  fal billed a request no report row pays: a duplicate (a submit whose answer was lost and
               that was sent again) or an orphan (a run that died before its report);
- not_billed:  the report has a cost, fal no event yet (fal lists events with a delay: run it again later).

A job paid twice (two state dirs on one key that both submitted it, klingflow.pipeline.peers) is one billed
request in each run's report, each matched; `duplicates` finds it from fal's side: the billed requests sent
with the job's tag (`klingflow.job=<job key prefix>`, fal's tagged-billed source), two or more per job key.

The result is a parquet file per reconciliation under `<report_dir>/_reconciliation/` (RECONCILIATION_SCHEMA,
documented in the README); `apply_to_reports` then rewrites the runs' reports so that a matched or
differing row carries fal's charge as its cost, with `cost_source = billing_event`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from klingflow.fal.outcomes import BillingEvent
from klingflow.models import CostSource
from klingflow.report.writer import atomic_path, conform_table, run_file_name

RECONCILIATION_VERSION = 1
RECONCILIATION_SUBDIR = "_reconciliation"  # '_' keeps it out of the report dataset's discovery
TOLERANCE_USD = Decimal("0.01")


class ChargeStatus(enum.StrEnum):
    matched = "matched"
    difference = "difference"
    unexpected = "unexpected"
    not_billed = "not_billed"


PROBLEMS = frozenset({ChargeStatus.difference, ChargeStatus.unexpected, ChargeStatus.not_billed})

_TS = pa.timestamp("us", tz="UTC")
RECONCILIATION_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("reconciled_at", _TS, nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("row", pa.int32()),
        pa.field("job_key", pa.string()),
        pa.field("report_cost_usd", pa.float64()),
        pa.field("fal_cost_usd", pa.float64()),
        pa.field("difference_usd", pa.float64(), nullable=False),
        pa.field("fal_units", pa.float64()),
        pa.field("fal_unit_price_usd", pa.float64()),
        pa.field("fal_percent_discount", pa.float64()),
        pa.field("billed_at", _TS),
        pa.field("note", pa.string()),
    ],
    metadata={"klingflow.reconciliation_version": str(RECONCILIATION_VERSION)},
)


@dataclass(frozen=True)
class Charge:
    """One request: what the report says it cost, and what fal charged for it."""

    request_id: str
    status: ChargeStatus
    run_id: str | None
    job_id: str | None
    row: int | None
    job_key: str | None
    report_cost_usd: Decimal | None
    event: BillingEvent | None
    note: str

    @property
    def fal_cost_usd(self) -> Decimal | None:
        return self.event.cost_total if self.event else None

    @property
    def difference_usd(self) -> Decimal:
        """fal's charge minus the report's cost (positive: fal charged more)."""
        return (self.fal_cost_usd or Decimal(0)) - (self.report_cost_usd or Decimal(0))


def _usd(value: Any) -> Decimal | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return Decimal(str(value))


def paying_rows(report: pd.DataFrame) -> pd.DataFrame:
    """The rows that carry their request's bill: they have a request id and did not reuse an earlier result."""
    if report.empty:
        return report
    return report[report["request_id"].notna() & (report["cost_source"] != CostSource.reused.value)]


def reconcile(report: pd.DataFrame, events: Iterable[BillingEvent], tagged: dict[str, str]) -> list[Charge]:
    """One Charge per request of the report's paying rows and per billed request; `tagged` maps the request
    ids that tag queries found to the run id of their tag (how an unexpected charge is attributed)."""
    billed = {event.request_id: event for event in events}
    charges = []
    seen: set[str] = set()
    for row in paying_rows(report).to_dict("records"):
        request_id = str(row["request_id"])
        if request_id in seen:
            continue  # a second row for one request (never written by klingflow): the first one carries it
        seen.add(request_id)
        charges.append(_charge(request_id, row, billed.get(request_id)))
    for request_id, event in billed.items():
        if request_id not in seen:
            run = tagged.get(request_id)
            note = f"fal billed request {request_id}, which no report row pays"
            note += f" (sent by run {run})" if run else ""
            charges.append(Charge(request_id, ChargeStatus.unexpected, run, None, None, None, None, event, note))
    return charges


@dataclass(frozen=True)
class Duplicate:
    """A job key fal billed more than one request for (the job paid twice or more)."""

    job_key: str
    job_ids: tuple[str, ...]
    events: tuple[BillingEvent, ...]  # fal's charges, first billed first
    reported: frozenset[str]  # the request ids a row of these reports pays or reuses

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(e.request_id for e in self.events)

    @property
    def extra_usd(self) -> Decimal:
        """What was paid beyond one request: every charge but the cheapest."""
        costs = sorted(e.cost_total for e in self.events)
        return sum(costs[1:], Decimal(0))


def duplicates(report: pd.DataFrame, by_job: dict[str, list[BillingEvent]]) -> list[Duplicate]:
    """The job keys of the report's rows that fal billed two or more requests for; `by_job` maps a job key to
    fal's billing events of the requests tagged with it (whichever run, state dir or machine sent them)."""
    found = []
    rows = report[report["job_key"].notna()] if not report.empty else report
    for key, events in sorted(by_job.items()):
        billed = {e.request_id: e for e in events if e.cost_total > 0}
        if len(billed) < 2:
            continue
        mine = rows[rows["job_key"] == key]
        ordered = sorted(billed.values(), key=lambda e: (e.timestamp is None, e.timestamp, e.request_id))
        found.append(
            Duplicate(
                job_key=key,
                job_ids=tuple(sorted(set(mine["job_id"].dropna().astype(str)))),
                events=tuple(ordered),
                reported=frozenset(mine["request_id"].dropna().astype(str)),
            )
        )
    return found


def _charge(request_id: str, row: dict[str, Any], event: BillingEvent | None) -> Charge:
    cost = _usd(row.get("cost_usd"))
    ids = (row.get("run_id"), row.get("job_id"), _int(row.get("row")), row.get("job_key"))
    if event is None:
        if cost:
            note = "the report has a cost and fal no billing event yet (fal lists them with a delay)"
            return Charge(request_id, ChargeStatus.not_billed, *ids, cost, None, note)
        return Charge(request_id, ChargeStatus.matched, *ids, cost, None, "not billed")
    delta = event.cost_total - (cost or Decimal(0))
    if abs(delta) <= TOLERANCE_USD:
        return Charge(request_id, ChargeStatus.matched, *ids, cost, event, "")
    note = f"fal charged ${event.cost_total:.4f}, the report ${cost or 0:.4f}"
    return Charge(request_id, ChargeStatus.difference, *ids, cost, event, note)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def problems(charges: Iterable[Charge]) -> list[Charge]:
    """The charges that are not a match: reconcile exits non-zero on any."""
    return [c for c in charges if c.status in PROBLEMS]


# --- the reconciliation's table -----------------------------------------------------------------------
def charges_table(charges: list[Charge], reconciled_at: datetime) -> pa.Table:
    """The charges as a table with exactly RECONCILIATION_SCHEMA."""
    rows = [
        {
            "schema_version": RECONCILIATION_VERSION,
            "reconciled_at": reconciled_at,
            "request_id": c.request_id,
            "status": c.status.value,
            "run_id": c.run_id,
            "job_id": c.job_id,
            "row": c.row,
            "job_key": c.job_key,
            "report_cost_usd": _float(c.report_cost_usd),
            "fal_cost_usd": _float(c.fal_cost_usd),
            "difference_usd": float(c.difference_usd),
            "fal_units": c.event.output_units if c.event else None,
            "fal_unit_price_usd": _float(c.event.unit_price) if c.event else None,
            "fal_percent_discount": c.event.percent_discount if c.event else None,
            "billed_at": c.event.timestamp if c.event else None,
            "note": c.note or None,
        }
        for c in charges
    ]
    return pa.Table.from_pylist(rows, schema=RECONCILIATION_SCHEMA)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def write_reconciliation(table: pa.Table, report_dir: Path, reconciled_at: datetime) -> Path:
    """The charges' table as `<report_dir>/_reconciliation/reconciliation-<UTC time>.parquet`, written
    atomically."""
    folder = Path(report_dir) / RECONCILIATION_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"reconciliation-{reconciled_at.strftime('%Y%m%dT%H%M%S%fZ')}.parquet"
    with atomic_path(final, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return final


def read_reconciliation(report_dir: Path) -> pd.DataFrame:
    """Each request's newest reconciliation (empty when there is none), newest first."""
    files = sorted((Path(report_dir) / RECONCILIATION_SUBDIR).glob("reconciliation-*.parquet"))
    if not files:
        return RECONCILIATION_SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables(pq.read_table(f, schema=RECONCILIATION_SCHEMA) for f in files)
    df = table.to_pandas().sort_values("reconciled_at", ascending=False, kind="stable")
    return df.drop_duplicates("request_id").reset_index(drop=True)


# --- totals -------------------------------------------------------------------------------------------
def totals_by(charges: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    """Per `key` (run_id, or day): fal's charges, the report's costs, their difference, and problems."""
    if charges.empty:
        return []
    groups = charges.assign(
        day=charges["billed_at"].dt.strftime("%Y-%m-%d").fillna("(not billed)"),
        run_id=charges["run_id"].fillna("(no run)"),
        problem=charges["status"].isin([s.value for s in PROBLEMS]),
        unexpected=charges["status"] == ChargeStatus.unexpected.value,
    ).groupby(key, sort=True)
    return [
        {
            key: name,
            "requests": len(group),
            "fal_cost_usd": round(float(group["fal_cost_usd"].fillna(0).sum()), 4),
            "report_cost_usd": round(float(group["report_cost_usd"].fillna(0).sum()), 4),
            "difference_usd": round(float(group["difference_usd"].sum()), 4),
            "problems": int(group["problem"].sum()),
            "unexpected": int(group["unexpected"].sum()),
        }
        for name, group in groups
    ]


# --- the runs' reports carry fal's bill -----------------------------------------------------------------
def apply_to_reports(report_dir: Path, history: pd.DataFrame, charges: list[Charge]) -> list[Path]:
    """Rewrite each run's report whose rows fal billed: such a row's cost is fal's charge
    (`cost_source = billing_event`); reused and unbilled rows are left as they are."""
    fal_cost = {c.request_id: c.fal_cost_usd for c in charges if c.event is not None and c.run_id}
    runs = {c.run_id for c in charges if c.event is not None and c.run_id and c.job_id is not None}
    written = []
    for run_id in sorted(runs):
        rows = history[history["run_id"] == run_id].copy()
        paying = paying_rows(rows)
        hit = paying.index[paying["request_id"].isin(fal_cost.keys())]
        if hit.empty:
            continue
        rows.loc[hit, "cost_usd"] = [float(fal_cost[r]) for r in rows.loc[hit, "request_id"]]
        rows.loc[hit, "cost_source"] = CostSource.billing_event.value
        table = conform_table(pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False))
        final = Path(report_dir) / run_file_name(run_id)
        with atomic_path(final, fsync=True) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        written.append(final)
    return written


@dataclass(frozen=True)
class ReconciliationView:
    """What `klingflow report` and the HTML report show of the newest reconciliation of some runs."""

    reconciled_at: datetime | None
    by_run: list[dict[str, Any]]
    problems: list[dict[str, Any]]

    @property
    def fal_cost_usd(self) -> float:
        return round(sum(r["fal_cost_usd"] for r in self.by_run), 4)


def reconciliation_view(report_dir: Path, run_ids: Iterable[str]) -> ReconciliationView | None:
    """The runs' newest reconciliation, or None when they were never reconciled."""
    recon = read_reconciliation(report_dir)
    recon = recon[recon["run_id"].isin(set(run_ids))]
    if recon.empty:
        return None
    found = recon[recon["status"].isin([s.value for s in PROBLEMS])]
    columns = ["status", "request_id", "run_id", "job_id", "fal_cost_usd", "report_cost_usd", "note"]
    rows = found[columns].astype(object).where(found[columns].notna(), None).to_dict("records")
    return ReconciliationView(recon["reconciled_at"].max().to_pydatetime(), totals_by(recon, "run_id"), rows)
