"""Run the flow in this process with a terminal progress bar (the CLI's `run` and `demo`)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from klingflow import events
from klingflow.errors import KlingflowError
from klingflow.manifest import load_manifest
from klingflow.models import EditParams, JobRecord

console = Console(stderr=True)


async def run_with_progress(params: EditParams):
    """Run `edit_videos`; None when the run could not start (the reason is printed)."""
    from flows.edit_videos import RunSummary, edit_videos

    try:  # read once here too: a bad manifest fails in milliseconds, before Prefect's start-up
        total = len(load_manifest(params.manifest))
    except KlingflowError as exc:
        console.print(f"[red]klingflow: {exc}[/red]")
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
            state = await edit_videos(params, return_state=True)
        finally:
            unsubscribe()
    summary = await state.aresult(raise_on_failure=False)
    if not isinstance(summary, RunSummary):
        console.print(f"[red]klingflow: the run could not complete: {state.message or summary}[/red]")
        return None
    print_summary(summary)
    return summary


def print_summary(summary) -> None:
    table = Table(title=f"run {summary.run_id}")
    table.add_column("job")
    table.add_column("status")
    for job_id, status in summary.statuses.items():
        colour = "green" if status in ("succeeded", "dry_run") else "red"
        table.add_row(job_id, f"[{colour}]{status}[/{colour}]")
    Console(file=sys.stdout).print(table)
    print(
        f"{summary.succeeded}/{summary.jobs} succeeded, ${summary.cost_usd:.2f} billed; "
        f"report {summary.report_path}; html {summary.html_path}"
    )
