"""`klingflow reconcile [REPORT_DIR]`: the reports beside fal's own bill (its billing events).

For the chosen runs it reads, with an admin key, the billing events of every request a report row
pays, of every request sent with the run's tag (`klingflow.run=<run id>`, so a duplicate or orphan
klingflow never learnt the id of is found too), and of every request sent with the tag of one of
the runs' jobs (`klingflow.job=<job key prefix>`: a job another state dir or machine paid for too);
writes the reconciliation as parquet under `REPORT_DIR/_reconciliation/`; rewrites the runs' reports
so billed rows carry fal's charge (`cost_source = billing_event`); and prints the totals per run and
per day, every problem, and every job fal billed more than once ("Duplicates", by job key).

Exit status: 0 when every charge matches to the cent; 1 on a difference, an unexpected charge, a
cost fal has not billed (yet) or a job billed twice; 2 when it cannot reconcile (no runs, no admin
key, fal unreachable). Needs no Prefect server. The admin key is read from the Prefect Secret block
`fal-admin-key` (with PREFECT_API_URL set) or FAL_ADMIN_KEY, and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from klingflow.endpoint import ENDPOINT_ID
from klingflow.errors import BackendError, FalError, FalRejected
from klingflow.fal.backend import admin_key_for, resolve_admin_key
from klingflow.fal.outcomes import BillingEvent
from klingflow.fal.queue import FalQueue, Target
from klingflow.fal.submit import JOB_TAG_CHARS, TAG_JOB, TAG_RUN
from klingflow.models import Backend, default_state_dir
from klingflow.pipeline.backend import simulator_url
from klingflow.report.reconcile import (
    Charge,
    Duplicate,
    apply_to_reports,
    charges_table,
    duplicates,
    paying_rows,
    problems,
    reconcile,
    totals_by,
    write_reconciliation,
)
from klingflow.report.summary import filter_history, parse_bound
from klingflow.report.writer import read_history

EXIT_OK, EXIT_DIFFERENCES, EXIT_CANNOT = 0, 1, 2
WINDOW_MARGIN = timedelta(hours=1)  # before a run's start: clocks differ
MAX_WINDOW = timedelta(days=90)  # fal's billing events take windows of at most 90 days
JOB_TAG_READS = 8  # billing-event reads by job tag at once (one per job key and window)
log = logging.getLogger("klingflow.reconcile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `klingflow reconcile`."""
    parser.add_argument("report_dir", nargs="?", default="reports", help="The report history folder (default: reports)")
    parser.add_argument("--run-id", action="append", dest="run_ids", metavar="ID", help="Only this run (repeatable)")
    parser.add_argument("--since", metavar="DATE", help="Runs started at/after DATE (YYYY-MM-DD or ISO datetime, UTC)")
    parser.add_argument("--until", metavar="DATE", help="Runs started before DATE (a date alone: that whole day)")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="klingflow's state dir, for the embedded simulator's bill (default: KLINGFLOW_HOME or ~/.klingflow)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="Output format")


def run(args: argparse.Namespace) -> int:
    """Reconcile the chosen runs; the exit status says whether fal's bill and the reports agree."""
    return asyncio.run(reconcile_runs(args))


async def reconcile_runs(args: argparse.Namespace) -> int:
    """`run` inside an event loop."""
    report_dir = Path(args.report_dir)
    try:
        since = parse_bound(args.since, end=False) if args.since else None
        until = parse_bound(args.until, end=True) if args.until else None
    except ValueError as exc:
        return _cannot(f"bad date: {exc}")
    history = read_history(report_dir)
    chosen = filter_history(history, run_ids=args.run_ids, since=since, until=until) if not history.empty else history
    chosen = chosen[~chosen["backend"].str.endswith("(dry run)")] if not chosen.empty else chosen
    if chosen.empty:
        return _cannot(f"no runs to reconcile in {report_dir}")
    try:
        charges, twice = await _charges(chosen, args.state_dir or default_state_dir())
    except (BackendError, OSError) as exc:
        return _cannot(str(exc))
    reconciled_at = datetime.now(UTC)
    table = charges_table(charges, reconciled_at)
    path = write_reconciliation(table, report_dir, reconciled_at)
    apply_to_reports(report_dir, history, charges)
    _show(charges, twice, table.to_pandas(), reconciled_at, path, args.format)
    return EXIT_DIFFERENCES if problems(charges) or twice else EXIT_OK


def _cannot(message: str) -> int:
    print(f"klingflow reconcile: {message}", file=sys.stderr)
    return EXIT_CANNOT


async def _charges(runs: pd.DataFrame, state_dir: str) -> tuple[list[Charge], list[Duplicate]]:
    """Every charge of the runs and every job of theirs billed twice, each group of runs asked of the fal (or
    simulator) it ran on."""
    charges: list[Charge] = []
    twice: list[Duplicate] = []
    for (kind, endpoint), group in runs.groupby([runs["backend"].map(_kind), runs["endpoint"]], sort=True):
        async with _billing(Backend(kind), str(endpoint), state_dir) as fal:
            events, tagged = await billing_of(fal, group)
            by_job = await billing_by_job(fal, group)
        charges += reconcile(group, events, tagged)
        twice += duplicates(group, by_job)
    return charges, twice


def _kind(backend: str) -> str:
    """The report's `backend` column ('fal', 'simulator (http://…)') as a Backend value."""
    return Backend.fal.value if backend == Backend.fal.value else Backend.simulator.value


@asynccontextmanager
async def _billing(kind: Backend, endpoint: str, state_dir: str) -> AsyncIterator[FalQueue]:
    """A connection to the fal the runs used, with the admin key (a simulator gets its own)."""
    key = admin_key_for(kind, resolve_admin_key(log) if kind is Backend.fal else None)
    if kind is Backend.fal:
        async with FalQueue(Target.fal(), key, endpoint=endpoint or ENDPOINT_ID) as fal:
            yield fal
        return
    with simulator_url(state_dir, log) as url:
        async with FalQueue(Target.simulator(url), key, endpoint=endpoint or ENDPOINT_ID) as fal:
            yield fal


def windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into windows fal's billing events accept (at most 90 days each)."""
    cuts = []
    while start < end:
        cuts.append((start, min(end, start + MAX_WINDOW)))
        start += MAX_WINDOW
    return cuts


async def billing_of(fal: FalQueue, runs: pd.DataFrame) -> tuple[list[BillingEvent], dict[str, str]]:
    """fal's events for the runs' paying requests and for their run tags; which run's tag found each."""
    start = pd.Timestamp(runs["run_started_at"].min()).to_pydatetime() - WINDOW_MARGIN
    spans = windows(start, datetime.now(UTC) + timedelta(minutes=1))
    ids = sorted(set(paying_rows(runs)["request_id"].astype(str)))
    tag_calls = [(run, span) for run in sorted(set(runs["run_id"])) for span in spans]
    try:
        by_id = await asyncio.gather(*(fal.billing_events(start=a, end=b, request_ids=ids) for a, b in spans if ids))
        by_tag = await asyncio.gather(
            *(fal.billing_events(start=a, end=b, tag=(TAG_RUN, run)) for run, (a, b) in tag_calls)
        )
    except FalRejected as exc:
        raise BackendError(f"fal refused to list billing events ({exc}): they need an admin API key") from exc
    except FalError as exc:
        raise BackendError(f"fal's billing events could not be read ({exc})") from exc
    tagged = {e.request_id: run for (run, _), page in zip(tag_calls, by_tag, strict=True) for e in page}
    events = {e.request_id: e for page in [*by_id, *by_tag] for e in page}
    return list(events.values()), tagged


async def billing_by_job(fal: FalQueue, runs: pd.DataFrame) -> dict[str, list[BillingEvent]]:
    """fal's billed requests per job key of the runs' rows, found by the job's tag (fal's tagged-billed source):
    those of every run, state dir or machine that sent the job, not only these reports' ones."""
    start = pd.Timestamp(runs["run_started_at"].min()).to_pydatetime() - WINDOW_MARGIN
    spans = windows(start, datetime.now(UTC) + timedelta(minutes=1))
    keys = sorted({str(k) for k in runs["job_key"].dropna()})
    gate = asyncio.Semaphore(JOB_TAG_READS)

    async def of(key: str) -> list[BillingEvent]:
        async with gate:
            pages = [await fal.billing_events(start=a, end=b, tag=(TAG_JOB, key[:JOB_TAG_CHARS])) for a, b in spans]
        return [event for page in pages for event in page]

    try:
        found = await asyncio.gather(*(of(key) for key in keys))
    except FalRejected as exc:
        raise BackendError(f"fal refused to list billing events ({exc}): they need an admin API key") from exc
    except FalError as exc:
        raise BackendError(f"fal's billing events could not be read ({exc})") from exc
    return dict(zip(keys, found, strict=True))


# --- output ---------------------------------------------------------------------------------------
def _show(
    charges: list[Charge], twice: list[Duplicate], table: pd.DataFrame, reconciled_at: datetime, path: Path, fmt: str
) -> None:
    runs, days = totals_by(table, "run_id"), totals_by(table, "day")
    found = problems(charges)
    if fmt == "json":
        body = {
            "reconciled_at": reconciled_at.isoformat(),
            "path": str(path),
            "requests": len(charges),
            "problems": [_problem(c) for c in found],
            "duplicates": [_duplicate(d) for d in twice],
            "runs": runs,
            "days": days,
        }
        json.dump(body, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    console = Console(file=sys.stdout, width=max(120, Console().width), highlight=False)
    fal_total = sum(r["fal_cost_usd"] for r in runs)
    report_total = sum(r["report_cost_usd"] for r in runs)
    console.print(
        f"[bold]{len(charges)} request(s)[/]: fal billed ${fal_total:.2f}, the reports say ${report_total:.2f}; "
        f"{len(found)} problem(s)"
    )
    console.print(_rich("By run", "run_id", runs))
    console.print(_rich("By day of fal's charge (UTC)", "day", days))
    if found:
        problem_table = Table(title="Problems", title_justify="left", header_style="bold")
        for header in ("status", "request", "run", "job", "fal", "report", "note"):
            problem_table.add_column(header, overflow="fold")
        for c in found:
            p = _problem(c)
            problem_table.add_row(
                p["status"], p["request_id"], p["run_id"] or "—", p["job_id"] or "—", p["fal"], p["report"], p["note"]
            )
        console.print(problem_table)
    elif not twice:
        console.print("Every charge matches the reports to the cent.")
    if twice:
        extra = sum(d.extra_usd for d in twice)
        title = f"Duplicates: {len(twice)} job(s) fal billed more than once (${extra:.2f} paid beyond one request each)"
        dup_table = Table(title=title, title_justify="left", header_style="bold")
        for header in ("job key", "job", "requests (fal's charge)", "paid twice"):
            dup_table.add_column(header, overflow="fold")
        for d in twice:
            row = _duplicate(d)
            requests = ", ".join(
                f"{r['request_id']} {r['fal']}{'' if r['in_reports'] else ' (not in these reports)'}"
                for r in row["requests"]
            )
            dup_table.add_row(row["job_key"], ", ".join(row["job_ids"]) or "—", requests, row["extra"])
        console.print(dup_table)
    console.print(f"reconciliation: {path}")


def _duplicate(d: Duplicate) -> dict[str, Any]:
    return {
        "job_key": d.job_key[:JOB_TAG_CHARS],
        "job_ids": list(d.job_ids),
        "requests": [
            {"request_id": e.request_id, "fal": f"${e.cost_total:.4f}", "in_reports": e.request_id in d.reported}
            for e in d.events
        ],
        "extra": f"${d.extra_usd:.4f}",
    }


def _problem(c: Charge) -> dict[str, Any]:
    return {
        "status": c.status.value,
        "request_id": c.request_id,
        "run_id": c.run_id,
        "job_id": c.job_id,
        "fal": "—" if c.fal_cost_usd is None else f"${c.fal_cost_usd:.4f}",
        "report": "—" if c.report_cost_usd is None else f"${c.report_cost_usd:.4f}",
        "note": c.note,
    }


def _rich(title: str, key: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    columns = [
        (key, key.replace("_id", "")),
        ("requests", "requests"),
        ("fal_cost_usd", "fal"),
        ("report_cost_usd", "report"),
    ]
    columns += [("difference_usd", "fal - report"), ("unexpected", "unexpected"), ("problems", "problems")]
    for _, header in columns:
        table.add_column(header, justify="left" if header in ("run", "day") else "right")
    for row in rows:
        table.add_row(*(_cell(row[k], k) for k, _ in columns))
    return table


def _cell(value: Any, key: str) -> str:
    return f"${value:.2f}" if key.endswith("_usd") else str(value)
