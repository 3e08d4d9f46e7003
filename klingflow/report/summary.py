"""Summaries of the report history: spend, success rate, failures, latency percentiles, costly jobs.

One implementation feeds the CLI (text/json/csv), the HTML report and the report task's markdown
artifact, so every view shows the same numbers. Definitions:

- succeeded: status == "succeeded"; failed: status in failed/cancelled/skipped_budget (JobRecord.ok).
- success rate: succeeded / (succeeded + failed); dry runs and pending jobs are not attempts.
- spend: sum of cost_usd over jobs that were not reused from an earlier run (no new money was spent on
  those, whatever cost they carry); estimated: sum of estimated_cost_usd over the same jobs.
- billed - estimated: over the jobs that were sent or meant to be sent (not reused, not budget-skipped, not
  dry runs): a budget-skipped job has an estimate and no bill by design, which is no estimate error.
- failures are grouped by status, stage and error kind (the message without its "row N (job)" prefix, with
  numbers, paths, URLs and quoted names masked), each with one example message.
- percentiles: linear interpolation over the non-null values (same as DuckDB's quantile_cont).
- days: UTC calendar days of run_started_at.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

FAILED_STATUSES = ("failed", "cancelled", "skipped_budget")
DURATION_COLUMNS = ("queued_s", "processing_s", "total_s")
NOT_ESTIMATE_ERRORS = ("skipped_budget", "dry_run")  # estimated, never meant to be billed
RUN_COLUMNS = ("run_name", "manifest_path", "manifest_sha256")  # schema v3; None for older reports


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
    estimate_delta_usd: float = 0.0  # billed - estimated over estimate_delta_jobs (positive: the estimate was low)
    estimate_delta_jobs: int = 0  # jobs compared: not reused, not budget-skipped, not dry runs
    budget_skipped: int = 0  # left out of estimate_delta_usd (skipped before any spend, by design)


@dataclass(frozen=True)
class Summary:
    """Everything the CLI prints; plain data so it serialises to JSON as is."""

    totals: Totals
    by_run: list[dict[str, Any]]
    by_day: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    top_jobs: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return json_clean(asdict(self))


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


def manifest_label(run: dict[str, Any]) -> str:
    """ "path (sha256 prefix)" of a run's manifest; "—" for reports older than schema v3."""
    path, sha = run.get("manifest_path"), run.get("manifest_sha256")
    if not isinstance(path, str) or not path:
        return "—"
    return f"{path} (sha256 {sha[:12]})" if isinstance(sha, str) and sha else path


def run_label(run: dict[str, Any], *, id_chars: int | None = None) -> str:
    """ "name (run id)" when the run has a name, else the run id (cut to `id_chars` when given)."""
    run_id = str(run.get("run_id"))
    short = run_id[:id_chars] if id_chars else run_id
    name = run.get("run_name")
    return f"{name} ({short})" if isinstance(name, str) and name else short


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

    def money(column: str, rows: pd.DataFrame = new_spend) -> float:
        return float(pd.to_numeric(rows[column], errors="coerce").fillna(0).sum())

    compared = new_spend[~new_spend["status"].astype(str).isin(NOT_ESTIMATE_ERRORS)]

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
        estimate_delta_usd=money("cost_usd", compared) - money("estimated_cost_usd", compared),
        estimate_delta_jobs=len(compared),
        budget_skipped=int((status == "skipped_budget").sum()),
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
    named = {c: (c, "first") for c in RUN_COLUMNS if c in df}
    firsts = df.groupby("run_id").agg(run_started_at=("run_started_at", "min"), backend=("backend", "first"), **named)
    for row in rows:
        for column in ("run_started_at", "backend", *RUN_COLUMNS):
            value = firsts.loc[row["run_id"], column] if column in firsts else None
            row[column] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        row.pop("runs")
    return sorted(rows, key=lambda r: (r["run_started_at"], r["run_id"]))


def by_day(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per UTC day of run start."""
    days = pd.to_datetime(df["run_started_at"], utc=True).dt.strftime("%Y-%m-%d")
    return _group_rows(df, "day", days.rename("day"))


_WHERE = re.compile(r"^row \S+ \([^)]*\)(, file .*?)?: ")
_MASKS = (
    (re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I), "<url>"),
    (re.compile(r"(?<![\w.])(?:~|\.{1,2})?/[^\s,;:'\"]+"), "<path>"),
    (re.compile(r"(['\"`])[^'\"`]*\1"), "'…'"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f-]{27}\b", re.I), "<id>"),
    (re.compile(r"(?<!HTTP )\b\d+(?:[.,]\d+)*"), "N"),  # HTTP status codes stay: 422 and 500 differ
)


def error_kind(error: Any) -> str:
    """What kind of failure a message describes, so 18 timeouts are one group and not 18.

    Every per-job message starts with "row N (job id)[, file P]: " (klingflow.errors.where); that prefix goes,
    and numbers, paths, URLs, ids and quoted names are masked: what is left is the reason's wording.
    """
    if not isinstance(error, str) or not error.strip():
        return "(no message)"
    reason = _WHERE.sub("", error.strip().splitlines()[0])
    for pattern, mask in _MASKS:
        reason = pattern.sub(mask, reason)
    return reason[:160]


def failures(df: pd.DataFrame, *, examples: int = 3) -> list[dict[str, Any]]:
    """Failed jobs grouped by (status, stage, error kind), most frequent first, with one example message and
    a few example job ids."""
    failed = df[df["status"].astype(str).isin(FAILED_STATUSES)]
    if failed.empty:
        return []
    keys = [
        failed["status"].astype(str),
        failed["error_stage"].fillna("").astype(str),
        failed["error"].map(error_kind).rename("kind"),
    ]
    groups = []
    for (status, stage, kind), part in failed.groupby(keys, sort=True):
        groups.append(
            {
                "status": status,
                "error_stage": stage or None,
                "kind": kind,
                "error": str(part["error"].fillna("(no message)").iloc[0])[:300],  # an example message
                "count": len(part),
                "runs": int(part["run_id"].nunique()),
                "examples": [f"{r}/{j}" for r, j in zip(part["run_id"], part["job_id"], strict=True)][:examples],
            }
        )
    return sorted(groups, key=lambda g: (-g["count"], g["kind"]))


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
