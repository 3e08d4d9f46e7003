"""Run the flow in this process with a terminal progress bar (the CLI's `run` and `demo`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from prefect.exceptions import TerminationSignal
from prefect.states import State
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
from klingflow.pipeline.stopping import signal_name, stop_on_signals
from klingflow.report.artifacts import job_table

if TYPE_CHECKING:
    from flows.edit_videos import RunSummary

console = Console(stderr=True)


ENGINE_GRACE_S = 15.0  # after the report, Prefect's own bookkeeping against a dead server gets this long
CANCEL_TRIES, CANCEL_WAIT_S = 3, 5.0  # then it is cancelled (again, when it catches it), this often and long


@dataclass
class Outcome:
    """How a run ended for the CLI: its summary (None: it could not start or complete), and the signal that
    stopped it, if one did."""

    summary: RunSummary | None = None
    signum: int | None = None
    orchestrator_down: bool = False  # Prefect's services would retry a dead server at exit: leave at once


async def run_with_progress(params: EditParams, *, verbose: bool = False) -> Outcome:
    """Run `edit_videos`; the summary is None when the run could not start (the reason is printed).

    SIGINT and SIGTERM stop the run cleanly from the first moment (klingflow.pipeline.stopping; the flow
    itself reports what finished). When the run's report is written but klingflow's Prefect server stopped
    answering, Prefect's engine gets ENGINE_GRACE_S to record the run's end, then the run ends without it.
    """
    from flows.edit_videos import RunSummary, edit_videos

    outcome = Outcome()
    reported = asyncio.Event()

    def noticed(notice: events.RunNotice) -> None:
        if notice.signum is not None:
            outcome.signum = outcome.signum or notice.signum
            console.print(f"[yellow]klingflow: {signal_name(notice.signum)}: stopping cleanly (again: at once)[/]")
        if isinstance(notice.summary, RunSummary):
            outcome.summary = notice.summary
            outcome.orchestrator_down = notice.orchestrator_down
            if notice.orchestrator_down:
                reported.set()

    def stopped(signum: int) -> None:
        noticed(events.RunNotice(signum=signum))

    with stop_on_signals(stopped):
        try:  # read once here too: a bad manifest fails in milliseconds, before Prefect's start-up
            total = len(load_manifest(params.manifest, logger=None))  # the run says what is wrong with it
            ensure_opens(params.state_dir)  # a damaged or unreachable request ledger too (its error names the way on)
        except KlingflowError as exc:
            console.print(f"[red]klingflow: {exc}[/red]", soft_wrap=True)  # one line, however long: a log may grep it
            return outcome
        columns = (
            TextColumn("[bold]edits"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task_id = bar.add_task("starting klingflow's Prefect server", total=total)

            def advance(job: JobRecord) -> None:
                bar.update(task_id, advance=1, description=f"{job.job_id}: {job.status}")

            unsubscribe = events.subscribe(advance)
            unsubscribe_run = events.subscribe_run(noticed)
            try:
                with prefect_api(), logs_above(bar.console, verbose=verbose):
                    bar.update(task_id, description="preparing the inputs")
                    flow = edit_videos.with_options(flow_run_name=params.run_name) if params.run_name else edit_videos
                    state = await _within_grace(flow(params, return_state=True), reported)  # --name names the run
            except LocalServerError as exc:
                console.print(f"[red]klingflow: {exc}[/red]")
                return outcome
            except (asyncio.CancelledError, TerminationSignal):
                if outcome.signum is None:
                    raise
                state = None
            finally:
                unsubscribe()
                unsubscribe_run()
    if state is not None and outcome.summary is None:
        summary = await state.aresult(raise_on_failure=False)
        if not isinstance(summary, RunSummary):
            console.print(f"[red]klingflow: the run could not complete: {state.message or summary}[/red]")
            return outcome
        outcome.summary = summary
    if outcome.summary is not None:
        print_summary(outcome.summary)
    return outcome


async def _within_grace(run: Awaitable[State | None], reported: asyncio.Event) -> State | None:
    """The flow's final state; None when its report is written, its Prefect server is down, and Prefect's
    engine did not finish within ENGINE_GRACE_S of the report (it retries a dead server for minutes)."""
    flow = asyncio.ensure_future(run)
    waiter = asyncio.ensure_future(reported.wait())
    try:
        await asyncio.wait([flow, waiter], return_when=asyncio.FIRST_COMPLETED)
        if not flow.done():
            await asyncio.wait([flow], timeout=ENGINE_GRACE_S)
        if flow.done():
            return flow.result()
        console.print(
            "[yellow]klingflow: the report is written; Prefect's server is not answering, so this run's end "
            "is not recorded in the Prefect UI[/]"
        )
        for _ in range(CANCEL_TRIES):  # Prefect's crash handling catches the first and retries the dead server
            flow.cancel()
            await asyncio.wait([flow], timeout=CANCEL_WAIT_S)
            if flow.done():
                break
        return None
    finally:
        waiter.cancel()
        if not flow.done() and not reported.is_set():  # this call was cancelled (a signal): the flow stops with it
            flow.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(flow)


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
            textwrap.shorten(row["error"] or row["warning"] or "", ERROR_WIDTH, placeholder=" …"),
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
