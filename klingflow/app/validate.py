"""`klingflow validate MANIFEST`: every row checked as a run would check it, without Prefect and without fal.

Schema, files, probes, @references, the endpoint's limits, the normalisation each video needs and the
estimate, in one pass: preprocessing is the run's own (klingflow.pipeline.intake), so a normalised file
is cached for the run that follows, and a row that passes here passes the run's checks. It sends fal
nothing (the price is the one a run read within the day, else the list price) and takes the options of
`klingflow run`. Exit 0 when every row is ready, 1 when a row is not, 2 when the manifest cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from klingflow.errors import KlingflowError
from klingflow.fal.backend import choose_backend, key_for, resolve_fal_key
from klingflow.fal.pricing import dry_run_price
from klingflow.inputs import InputPolicy
from klingflow.ledger.identity import with_job_key
from klingflow.ledger.store import RequestLedger
from klingflow.manifest import load_manifest
from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import Backend, EditParams, JobRecord
from klingflow.pipeline.backend import target_namespace
from klingflow.pipeline.estimate import Estimate, estimate
from klingflow.pipeline.intake import Intake

EXIT_READY, EXIT_NOT_READY, EXIT_CANNOT_READ = 0, 1, 2
ERROR_WIDTH = 160
log = logging.getLogger("klingflow.validate")  # said on stderr by `run`: unknown columns, the price used
quiet = logging.getLogger("klingflow.validate.rows")  # each row's verdict is in the table already
quiet.addHandler(logging.NullHandler())
quiet.propagate = False


class RowCheck(BaseModel):
    """One manifest row as the run would find it."""

    row: int
    job_id: str
    ready: bool
    already_paid: bool
    seconds: float | None
    estimated_cost_usd: float | None
    actions: list[str]
    error: str | None


class Validation(BaseModel):
    """Every row and the run's estimate (`text` as the run would log it)."""

    manifest: str
    rows: list[RowCheck]
    estimate: Estimate
    text: str

    @property
    def ready(self) -> bool:
        return all(r.ready for r in self.rows)


async def validate(params: EditParams) -> Validation:
    """Check every row of `params.manifest` (KlingflowError when the manifest itself cannot be read)."""
    inputs = InputPolicy.confined(
        params.input_roots, params.input_hosts, params.allow_private_addresses, default_root=None
    )
    jobs = load_manifest(params.manifest, log, inputs)
    async with Intake(jobs, PreprocessSettings.from_params(params, inputs), quiet) as intake:
        prepared = [row for row in await intake.settled(None) if row is not None]
    key = resolve_fal_key(log)
    kind = choose_backend(params.backend, key, log)
    sent_key = key_for(kind, key) if key or kind is not Backend.fal else None
    state = Path(params.state_dir).expanduser()
    price = dry_run_price(state / "pricing", target_namespace(kind), params.endpoint, sent_key, log)
    rows = [price.estimated(with_job_key(job, params.endpoint)) for job in prepared]
    with RequestLedger(state / "requests", namespace=kind.value) as ledger:
        owned = {r.job_key for r in rows if r.ok and r.job_key and not params.force and ledger.has_result(r.job_key)}
    figures = estimate(list(rows), price, owned.__contains__)
    return Validation(
        manifest=str(Path(params.manifest).expanduser().resolve()),
        rows=[_check(r, r.job_key in owned) for r in rows],
        estimate=figures,
        text=figures.text(params.max_budget_usd, params.estimate_wait_s),
    )


def _check(job: JobRecord, paid: bool) -> RowCheck:
    return RowCheck(
        row=job.row,
        job_id=job.job_id,
        ready=job.ok,
        already_paid=paid,
        seconds=job.estimated_seconds if job.ok else None,
        estimated_cost_usd=job.estimated_cost_usd if job.ok else None,
        actions=job.preprocess_actions,
        error=job.error,
    )


def print_text(result: Validation) -> None:
    """A table of every row, then the estimate and the verdict."""
    table = Table(title=f"validate {result.manifest}")
    for column in ("row", "job", "ready", "seconds", "estimate", "preprocessing", "error"):
        table.add_column(column, overflow="fold")
    for r in result.rows:
        ready = (
            "[red]no[/red]"
            if not r.ready
            else "[green]paid already[/green]"
            if r.already_paid
            else "[green]yes[/green]"
        )
        table.add_row(
            str(r.row),
            r.job_id,
            ready,
            "" if r.seconds is None else f"{r.seconds:g}",
            "" if r.estimated_cost_usd is None else f"${r.estimated_cost_usd:.2f}",
            ", ".join(r.actions),
            textwrap.shorten(r.error or "", ERROR_WIDTH, placeholder=" …"),
        )
    Console(file=sys.stdout).print(table)
    bad = sum(not r.ready for r in result.rows)
    verdict = "every row is ready" if not bad else f"{bad} of {len(result.rows)} row(s) would fail"
    print(f"{result.text}\n{verdict}")


def run(args: argparse.Namespace, params: EditParams) -> int:
    """The command: check, print (text or JSON), and exit by the verdict."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("klingflow: %(message)s"))
    log.addHandler(handler)
    try:
        result = asyncio.run(validate(params))
    except KlingflowError as exc:
        print(f"klingflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT_READ
    finally:
        log.removeHandler(handler)
    if args.format == "json":
        print(json.dumps({**result.model_dump(mode="json"), "ready": result.ready}, indent=2))
    else:
        print_text(result)
    return EXIT_READY if result.ready else EXIT_NOT_READY
