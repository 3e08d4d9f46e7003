"""Summaries of the report history: spend, success rate, failures, latency percentiles, costly jobs.

One implementation feeds the CLI (text/json/csv), the HTML report and the report task's markdown
artifact, so every view shows the same numbers. Definitions:

- succeeded: status == "succeeded"; failed: status in failed/cancelled/skipped_budget (JobRecord.ok).
- success rate: succeeded / (succeeded + failed); dry runs and pending jobs are not attempts.
- spend: sum of cost_usd over jobs that were not reused from an earlier run (no new money was spent on
  those, whatever cost they carry); estimated: sum of estimated_cost_usd over the same jobs.
- percentiles: linear interpolation over the non-null values (same as DuckDB's quantile_cont).
- days: UTC calendar days of run_started_at.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

FAILED_STATUSES = ("failed", "cancelled", "skipped_budget")
DURATION_COLUMNS = ("queued_s", "processing_s", "total_s")


@dataclass(frozen=True)
class Totals:
    """Headline numbers for a set of jobs."""

    runs: int
    jobs: int
    succeeded: int
    failed: int
    other: int
    success_rate: float | None
    cost_usd: float
    estimated_cost_usd: float
    billed_seconds: float
    estimated_seconds: float
    reused: int
    durations: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def estimate_delta_usd(self) -> float:
        """Billed minus estimated (positive: the estimate was low)."""
        return self.cost_usd - self.estimated_cost_usd


@dataclass(frozen=True)
class Summary:
    """Everything the CLI prints; plain data so it serialises to JSON as is."""

    totals: Totals
    by_run: list[dict[str, Any]]
    by_day: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    top_jobs: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"]["estimate_delta_usd"] = self.totals.estimate_delta_usd
        return json_clean(data)


def json_clean(value: Any) -> Any:
    """NaN → None and timestamps → ISO strings, recursively (JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_clean(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)  # no 2.3520000000000003 in machine output
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return json_clean(value.item())
    return value


def number(value: Any) -> float | None:
    """`value` as a float; None for None, NaN and anything that is not a number."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def format_usd(value: Any, digits: int = 2) -> str:
    """Dollars as every view prints them: "$1,234.50", "-$0.34", "—" when unknown."""
    amount = number(value)
    if amount is None:
        return "—"
    return f"-${-amount:,.{digits}f}" if amount < 0 else f"${amount:,.{digits}f}"


def percentile(values: pd.Series, q: float) -> float | None:
    """The q-quantile (0..1) of the non-null values, linear interpolation; None when there are none."""
    clean = pd.to_numeric(values, errors="coerce").dropna()
    return None if clean.empty else float(clean.quantile(q, interpolation="linear"))


def duration_stats(df: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """p50/p95/max and count of queued_s, processing_s and total_s."""
    stats = {}
    for col in DURATION_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce").dropna() if col in df else pd.Series(dtype=float)
        stats[col] = {
            "n": int(values.size),
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "max": float(values.max()) if values.size else None,
        }
    return stats


def totals(df: pd.DataFrame) -> Totals:
    """Headline totals of a set of rows (any number of runs)."""
    status = df["status"].astype(str)
    succeeded = int((status == "succeeded").sum())
    failed = int(status.isin(FAILED_STATUSES).sum())
    attempted = succeeded + failed
    reused = df["reused"].fillna(False).astype(bool)
    new_spend = df.loc[~reused]

    def money(column: str) -> float:
        return float(pd.to_numeric(new_spend[column], errors="coerce").fillna(0).sum())

    return Totals(
        runs=int(df["run_id"].nunique()),
        jobs=len(df),
        succeeded=succeeded,
        failed=failed,
        other=len(df) - attempted,
        success_rate=succeeded / attempted if attempted else None,
        cost_usd=money("cost_usd"),
        estimated_cost_usd=money("estimated_cost_usd"),
        billed_seconds=money("billed_seconds"),
        estimated_seconds=money("estimated_seconds"),
        reused=int(reused.sum()),
        durations=duration_stats(df),
    )


def _group_rows(df: pd.DataFrame, key: str, key_values: pd.Series) -> list[dict[str, Any]]:
    rows = []
    for value, part in df.groupby(key_values, sort=True):
        t = totals(part)
        rows.append(
            {
                key: value,
                "runs": t.runs,
                "jobs": t.jobs,
                "succeeded": t.succeeded,
                "failed": t.failed,
                "success_rate": t.success_rate,
                "cost_usd": t.cost_usd,
                "estimated_cost_usd": t.estimated_cost_usd,
                "billed_seconds": t.billed_seconds,
                **{f"{col}_{q}": t.durations[col][q] for col in DURATION_COLUMNS for q in ("p50", "p95")},
            }
        )
    return rows


def by_run(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per run, in start order, with its start time, backend and totals."""
    rows = _group_rows(df, "run_id", df["run_id"])
    firsts = df.groupby("run_id").agg(run_started_at=("run_started_at", "min"), backend=("backend", "first"))
    for row in rows:
        row["run_started_at"] = firsts.loc[row["run_id"], "run_started_at"]
        row["backend"] = firsts.loc[row["run_id"], "backend"]
        row.pop("runs")
    return sorted(rows, key=lambda r: (r["run_started_at"], r["run_id"]))


def by_day(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per UTC day of run start."""
    days = pd.to_datetime(df["run_started_at"], utc=True).dt.strftime("%Y-%m-%d")
    return _group_rows(df, "day", days.rename("day"))


def failures(df: pd.DataFrame, *, examples: int = 3) -> list[dict[str, Any]]:
    """Failed jobs grouped by (status, stage, error), most frequent first, with a few example job ids."""
    failed = df[df["status"].astype(str).isin(FAILED_STATUSES)]
    if failed.empty:
        return []
    keys = pd.DataFrame(
        {
            "status": failed["status"].astype(str),
            "error_stage": failed["error_stage"].fillna("").astype(str),
            "error": failed["error"].fillna("(no message)").astype(str).str.slice(0, 300),
        }
    )
    groups = []
    for (status, stage, error), part in failed.groupby([keys["status"], keys["error_stage"], keys["error"]]):
        groups.append(
            {
                "status": status,
                "error_stage": stage or None,
                "error": error,
                "count": len(part),
                "runs": int(part["run_id"].nunique()),
                "examples": [f"{r}/{j}" for r, j in zip(part["run_id"], part["job_id"], strict=True)][:examples],
            }
        )
    return sorted(groups, key=lambda g: (-g["count"], g["error"]))


def top_jobs(df: pd.DataFrame, n: int = 10) -> list[dict[str, Any]]:
    """The n most expensive jobs (by cost_usd) across the set."""
    costed = df[pd.to_numeric(df["cost_usd"], errors="coerce").notna()]
    top = costed.sort_values(["cost_usd", "run_started_at"], ascending=[False, True]).head(n)
    cols = [
        "run_id",
        "job_id",
        "row",
        "status",
        "cost_usd",
        "billed_seconds",
        "estimated_cost_usd",
        "reused",
        "total_s",
        "prompt",
        "output_url",
        "output_path",
    ]
    return [{c: rec.get(c) for c in cols} for rec in top.to_dict("records")]


def summarize(df: pd.DataFrame, *, top: int = 10) -> Summary:
    """The full cross-run summary of a (filtered) history."""
    return Summary(
        totals=totals(df), by_run=by_run(df), by_day=by_day(df), failures=failures(df), top_jobs=top_jobs(df, top)
    )


def parse_bound(text: str, *, end: bool) -> datetime:
    """A --since/--until value as an aware UTC datetime.

    A date alone (2025-03-01) covers the whole UTC day: since → its start, until → the next day's start
    (used as an exclusive bound). A datetime without zone is taken as UTC.
    """
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def filter_history(
    df: pd.DataFrame, *, run_ids: list[str] | None = None, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Rows of the chosen runs and run-start window ([since, until); until exclusive)."""
    mask = pd.Series(True, index=df.index)
    if run_ids:
        mask &= df["run_id"].isin(run_ids)
    started = pd.to_datetime(df["run_started_at"], utc=True)
    if since is not None:
        mask &= started >= pd.Timestamp(since)
    if until is not None:
        mask &= started < pd.Timestamp(until)
    return df[mask]
