"""`klingflow report`: the history across runs in the terminal (rich), as JSON/CSV, or as one HTML file.

Exit status: 0 with output; 1 when the report directory holds no runs or the filters match none
(like grep), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from klingflow.report.html import write_html
from klingflow.report.reconcile import ReconciliationView, reconciliation_view
from klingflow.report.summary import (
    DURATION_COLUMNS,
    Summary,
    filter_history,
    format_usd,
    json_clean,
    manifest_label,
    parse_bound,
    run_label,
    summarize,
)
from klingflow.report.writer import read_history, thumb_cache_dir

CSV_TABLES = ("runs", "days", "errors", "top", "jobs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `klingflow report` (the lead wires them into klingflow/cli.py)."""
    parser.add_argument(
        "report_dir",
        nargs="?",
        default="reports",
        help="The report history folder (default: reports), or one run's report file (the path `run` prints)",
    )
    parser.add_argument("--run-id", action="append", dest="run_ids", metavar="ID", help="Only this run (repeatable)")
    parser.add_argument("--since", metavar="DATE", help="Runs started at/after DATE (YYYY-MM-DD or ISO datetime, UTC)")
    parser.add_argument(
        "--until", metavar="DATE", help="Runs started before DATE; a date alone includes that whole day (UTC)"
    )
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text", help="Output format")
    parser.add_argument(
        "--table",
        choices=CSV_TABLES,
        default="runs",
        help="With --format csv: which table (runs, days, errors, top jobs, or every job row)",
    )
    parser.add_argument("--top", type=int, default=10, metavar="N", help="How many of the most expensive jobs")
    parser.add_argument("--html", metavar="OUT.html", help="Also write one offline HTML report of the chosen runs")
    parser.add_argument("--no-thumbnails", action="store_true", help="HTML without before/after frames (faster)")


def run(args: argparse.Namespace) -> int:
    """Print the summary of the chosen runs (and write the HTML report if asked)."""
    report_dir = Path(args.report_dir)
    only_file = report_dir if report_dir.is_file() else None
    report_dir = report_dir.parent if only_file else report_dir
    try:
        since = parse_bound(args.since, end=False) if args.since else None
        until = parse_bound(args.until, end=True) if args.until else None
    except ValueError as exc:
        print(f"klingflow report: bad date: {exc}", file=sys.stderr)
        return 2
    history = read_history(only_file or report_dir)
    if history.empty:
        print(f"klingflow report: no runs in {only_file or report_dir}", file=sys.stderr)
        return 1
    df = filter_history(history, run_ids=args.run_ids, since=since, until=until)
    unknown = sorted(set(args.run_ids or []) - set(history["run_id"]))
    if unknown:
        print(f"klingflow report: unknown run id(s): {', '.join(unknown)}", file=sys.stderr)
    if df.empty:
        print("klingflow report: no runs match the filters", file=sys.stderr)
        return 1
    summary = summarize(df, top=args.top)
    recon = reconciliation_view(report_dir, set(df["run_id"]))
    if args.format == "json":
        _print_json(summary, recon)
    elif args.format == "csv":
        _print_csv(summary, df, args)
    else:
        _print_text(summary, df, args)
        if recon is not None:
            _print_reconciliation(recon)
    if args.html:
        out = write_html(
            df,
            Path(args.html),
            title=_html_title(summary),
            summary=summary,
            thumbnails=not args.no_thumbnails,
            thumb_cache_dir=thumb_cache_dir(report_dir),
            reconciliation=recon,
        )
        print(f"HTML report: {out}", file=sys.stderr)
    return 0


def _html_title(summary: Summary) -> str:
    runs = summary.by_run
    if len(runs) == 1:
        return f"klingflow run {run_label(runs[0])}"
    return f"klingflow report: {len(runs)} runs"


# ---------------------------------------------------------------- text


def _fmt(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if kind == "usd":
        return format_usd(value)
    if kind == "pct":
        return f"{value:.0%}"
    if kind == "s":
        return f"{value:,.1f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def _table(title: str, columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> Table:
    """A rich table; columns are (key, header, kind) and numeric kinds are right-aligned."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for _, header, kind in columns:
        table.add_column(
            header,
            justify="right" if kind in ("usd", "pct", "s", "n") else "left",
            overflow="fold",
            no_wrap=kind in ("t", "id"),
        )
    for row in rows:
        table.add_row(*(_fmt(row.get(key), kind) for key, _, kind in columns))
    return table


_GROUP_COLUMNS = [
    ("jobs", "jobs", "n"),
    ("succeeded", "ok", "n"),
    ("failed", "failed", "n"),
    ("success_rate", "success", "pct"),
    ("cost_usd", "spend", "usd"),
    ("estimated_cost_usd", "estimated", "usd"),
    ("total_s_p50", "total p50 s", "s"),
    ("total_s_p95", "total p95 s", "s"),
]


def _print_text(summary: Summary, df: pd.DataFrame, args: argparse.Namespace) -> None:
    console = Console(file=sys.stdout, width=max(120, Console().width), highlight=False)
    t = summary.totals
    console.print(
        f"[bold]{t.runs} run(s), {t.jobs} job(s)[/]: {t.succeeded} succeeded, {t.failed} failed, "
        f"{t.other} other · success rate {_fmt(t.success_rate, 'pct')} · spend {_fmt(t.cost_usd, 'usd')} "
        f"(estimated {_fmt(t.estimated_cost_usd, 'usd')}, billed - estimated "
        f"{_fmt(t.estimate_delta_usd, 'usd')} over {t.estimate_delta_jobs} job(s)"
        + (f", {t.budget_skipped} budget-skipped left out" if t.budget_skipped else "")
        + f") · {t.billed_seconds:,.0f} billed s"
        + (f" · {t.reused} reused" if t.reused else "")
    )
    console.print(
        _table(
            "Spend by run",
            [
                ("run_id", "run", "id"),
                ("run_started_at", "started (UTC)", "t"),
                ("backend", "backend", ""),
                *_GROUP_COLUMNS,
            ],
            summary.by_run,
        )
    )
    console.print(
        _table(
            "Runs: name and manifest",
            [("run_id", "run", "id"), ("run_name", "name", ""), ("manifest", "manifest (sha256)", "")],
            [{**r, "manifest": manifest_label(r)} for r in summary.by_run],
        )
    )
    console.print(
        _table("Spend by day (UTC)", [("day", "day", "id"), ("runs", "runs", "n"), *_GROUP_COLUMNS], summary.by_day)
    )
    durations = [{"metric": col, **t.durations[col]} for col in DURATION_COLUMNS]
    console.print(
        _table(
            "Durations (seconds)",
            [("metric", "", ""), ("n", "n", "n"), ("p50", "p50", "s"), ("p95", "p95", "s"), ("max", "max", "s")],
            durations,
        )
    )
    if summary.failures:
        failures = [{**f, "examples": ", ".join(f["examples"])} for f in summary.failures]
        console.print(
            _table(
                "Failures by error",
                [
                    ("count", "n", "n"),
                    ("status", "status", ""),
                    ("error_stage", "stage", ""),
                    ("kind", "error kind", ""),
                    ("error", "example message", ""),
                    ("examples", "examples", ""),
                ],
                failures,
            )
        )
    else:
        console.print("No failures.")
    console.print(
        _table(
            f"Most expensive jobs (top {args.top})",
            [
                ("cost_usd", "cost", "usd"),
                ("billed_seconds", "billed s", "s"),
                ("run_id", "run", ""),
                ("job_id", "job", ""),
                ("status", "status", ""),
                ("prompt", "prompt", ""),
            ],
            [{**j, "prompt": str(j["prompt"])[:60]} for j in summary.top_jobs],
        )
    )


# ---------------------------------------------------------------- machine formats


def _print_reconciliation(recon: ReconciliationView) -> None:
    """The runs' newest reconciliation with fal's billing events (`klingflow reconcile`)."""
    console = Console(file=sys.stdout, width=max(120, Console().width), highlight=False)
    when = recon.reconciled_at.strftime("%Y-%m-%d %H:%M UTC") if recon.reconciled_at else "—"
    console.print(
        _table(
            f"fal's bill (billing events, reconciled {when}): ${recon.fal_cost_usd:.2f}",
            [
                ("run_id", "run", "id"),
                ("requests", "requests", "n"),
                ("fal_cost_usd", "fal", "usd"),
                ("report_cost_usd", "report", "usd"),
                ("unexpected", "unexpected", "n"),
                ("problems", "problems", "n"),
            ],
            recon.by_run,
        )
    )
    if recon.problems:
        console.print(
            _table(
                "Charges that do not match",
                [
                    ("status", "status", ""),
                    ("request_id", "request", "id"),
                    ("run_id", "run", "id"),
                    ("job_id", "job", ""),
                    ("fal_cost_usd", "fal", "usd"),
                    ("report_cost_usd", "report", "usd"),
                    ("note", "note", ""),
                ],
                recon.problems,
            )
        )


def _print_json(summary: Summary, recon: ReconciliationView | None) -> None:
    data = summary.to_dict()
    if recon is not None:
        data["reconciliation"] = json_clean(asdict(recon))
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _csv_rows(summary: Summary, df: pd.DataFrame, table: str) -> list[dict[str, Any]]:
    data = summary.to_dict()
    if table == "jobs":
        jobs = df.copy()
        jobs["preprocess_actions"] = jobs["preprocess_actions"].map(lambda a: ";".join(a) if a is not None else "")
        return [{k: _csv_value(v) for k, v in rec.items()} for rec in jobs.to_dict("records")]
    if table == "errors":
        return [{**f, "examples": ";".join(f["examples"])} for f in data["failures"]]
    return {"runs": data["by_run"], "days": data["by_day"], "top": data["top_jobs"]}[table]


def _csv_value(value: Any) -> Any:
    if value is None or (not isinstance(value, (list, str)) and pd.isna(value)):
        return ""
    return value.isoformat() if isinstance(value, pd.Timestamp) else value


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: cells a spreadsheet would evaluate


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe (OWASP's
    advice); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _print_csv(summary: Summary, df: pd.DataFrame, args: argparse.Namespace) -> None:
    rows = _csv_rows(summary, df, args.table)
    fields = [csv_safe(f) for f in rows[0]] if rows else []
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([csv_safe(v) for v in row.values()] for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m klingflow.report.cli REPORT_DIR ...`."""
    parser = argparse.ArgumentParser(prog="klingflow report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
