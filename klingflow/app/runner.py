"""Run the flow in this process with a terminal progress bar (the CLI's `run` and `demo`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from klingflow import events
from klingflow.errors import KlingflowError
from klingflow.manifest import load_manifest
from klingflow.models import EditParams, JobRecord

console = Console(stderr=True)
# Prefect gives a temporary server 20 s to start; on a busy 2-core machine its first start (migrations)
# was measured at 21-35 s. A run waits this long before it gives up with one clear line (exit 2).
TEMPORARY_SERVER_START_S = 180.0
TEMPORARY_SERVER_ERROR = "ephemeral Prefect API server"


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
            with _patient_temporary_server():
                state = await edit_videos(params, return_state=True)
        except RuntimeError as exc:
            if TEMPORARY_SERVER_ERROR not in str(exc):
                raise
            console.print(
                f"[red]klingflow: the temporary Prefect server did not start within "
                f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value():.0f} s; start one (`prefect server "
                "start`) and set PREFECT_API_URL, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS[/red]"
            )
            return None
        finally:
            unsubscribe()
    summary = await state.aresult(raise_on_failure=False)
    if not isinstance(summary, RunSummary):
        console.print(f"[red]klingflow: the run could not complete: {state.message or summary}[/red]")
        return None
    print_summary(summary)
    return summary


@contextmanager
def _patient_temporary_server() -> Iterator[None]:
    """Give a temporary Prefect server time to start (unless the user chose a timeout); restored after."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: TEMPORARY_SERVER_START_S}):
        yield


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
