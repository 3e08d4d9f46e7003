"""Run the flow in this process with a terminal progress bar (the CLI's `run` and `demo`)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from klingflow import events
from klingflow.app.local_prefect import LocalServerError, prefect_api
from klingflow.app.terminal import logs_above
from klingflow.errors import KlingflowError
from klingflow.ledger.repair import ensure_opens
from klingflow.manifest import load_manifest
from klingflow.models import EditParams, JobRecord
from klingflow.report.artifacts import job_table

if TYPE_CHECKING:
    from flows.edit_videos import RunSummary

console = Console(stderr=True)


async def run_with_progress(params: EditParams, *, verbose: bool = False):
    """Run `edit_videos`; None when the run could not start (the reason is printed)."""
    from flows.edit_videos import RunSummary, edit_videos

    try:  # read once here too: a bad manifest fails in milliseconds, before Prefect's start-up
        total = len(load_manifest(params.manifest, logger=None))  # the run says what is wrong with it
        ensure_opens(params.state_dir)  # a damaged or unreachable request ledger too (its error names the way on)
    except KlingflowError as exc:
        console.print(f"[red]klingflow: {exc}[/red]", soft_wrap=True)  # one line, however long: a log may grep it
        return None
    columns = (
        TextColumn("[bold]edits"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task("", total=total)

        def advance(job: JobRecord) -> None:
            bar.update(task_id, advance=1, description=f"{job.job_id}: {job.status}")

        unsubscribe = events.subscribe(advance)
        try:
            with prefect_api(), logs_above(bar.console, verbose=verbose):
                flow = edit_videos.with_options(flow_run_name=params.run_name) if params.run_name else edit_videos
                state = await flow(params, return_state=True)  # --name also names the run in the Prefect UI
        except LocalServerError as exc:
            console.print(f"[red]klingflow: {exc}[/red]")
            return None
        finally:
            unsubscribe()
    summary = await state.aresult(raise_on_failure=False)
    if not isinstance(summary, RunSummary):
        console.print(f"[red]klingflow: the run could not complete: {state.message or summary}[/red]")
        return None
    print_summary(summary)
    return summary


ERROR_WIDTH = 160  # the terminal shows the start of each error; the report has it whole
OK_STATUSES = ("succeeded", "dry_run")


def print_summary(summary: RunSummary) -> None:
    """Every row of the run (by manifest row) with its status, cost and error, then the totals."""
    rows = _report_rows(summary)
    ready = sum(row["status"] == "dry_run" for row in rows)
    dry_run = ready > 0  # only a dry run has dry_run rows
    table = Table(title=f"run {summary.run_id}")
    for column in ("row", "job", "status", "estimate" if dry_run else "cost", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        colour = "green" if row["status"] in OK_STATUSES else "red"
        cost = row["estimated_cost_usd"] if dry_run else row["cost_usd"]
        table.add_row(
            str(row["row"]),
            row["job_id"],
            f"[{colour}]{row['status']}[/{colour}]",
            "" if cost is None else f"${cost:.2f}",
            textwrap.shorten(row["error"] or "", ERROR_WIDTH, placeholder=" …"),
        )
    Console(file=sys.stdout).print(table)
    if dry_run:
        failed = f", {summary.jobs - ready} failed" if summary.jobs > ready else ""
        estimate = f"estimate ${summary.estimated_usd:.2f}"
        outcome = f"dry run: {ready}/{summary.jobs} job(s) ready{failed}, {estimate}; nothing was submitted"
    else:
        outcome = f"{summary.succeeded}/{summary.jobs} succeeded, ${summary.cost_usd:.2f} billed"
    print(f"{outcome}; report {summary.report_path}; html {summary.html_path}")


def _report_rows(summary: RunSummary) -> list[dict]:
    """This run's report rows in manifest order (the report is the truth: one line per row, ids may repeat)."""
    if not summary.report_path or not Path(summary.report_path).is_file():
        return []
    return sorted(job_table(pd.read_parquet(summary.report_path)), key=lambda row: row["row"])
