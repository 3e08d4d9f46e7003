"""`klingflow` command line: run a manifest or the demo, run the simulator, read reports, check the ledger.

Exit codes of `run` and `demo`: 0 every job succeeded (or was reused, or dry run); 1 at least one
job failed, was cancelled or skipped by the budget; 2 the run could not start (bad manifest,
parameters or backend, a damaged or unreachable request ledger); 130 stopped by SIGINT (Ctrl-C),
143 stopped by SIGTERM — in both cases after cancelling its requests at fal and writing the report
of what finished (a second signal stops at once).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import signal
import sys
import types
from collections.abc import Sequence
from typing import get_args, get_origin

from pydantic import ValidationError

from klingflow import __version__
from klingflow.models import Backend, EditParams

EXIT_OK, EXIT_JOBS_FAILED, EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klingflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"klingflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the edits of a manifest")
    run.add_argument("manifest", help="manifest file (.csv, .jsonl, .yaml)")
    add_run_options(run)
    add_verbose(run)

    check = sub.add_parser(
        "validate",
        help="check every row of a manifest as a run would (files, probes, limits, estimate); sends fal nothing",
    )
    check.add_argument("manifest", help="manifest file (.csv, .jsonl, .yaml)")
    check.add_argument("--format", choices=["text", "json"], default="text", help="output format (default: text)")
    add_run_options(check)

    demo = sub.add_parser("demo", help="generate the demo inputs and run data/demo/manifest.csv on the simulator")
    demo.add_argument("--time-scale", type=float, default=1.0, help="simulator seconds per video second")
    demo.add_argument("--out", default="outputs", help="output directory")
    demo.add_argument("--report-dir", default="reports", help="report directory")
    add_verbose(demo)

    sim = sub.add_parser("simulator", help="run the local fal simulator")
    from klingflow.simulator.cli import add_arguments as add_simulator_arguments

    add_simulator_arguments(sim)

    rep = sub.add_parser("report", help="summarize the report history")
    from klingflow.report.cli import add_arguments as add_report_arguments

    add_report_arguments(rep)

    reconcile = sub.add_parser("reconcile", help="match the reports to fal's billing events (needs an admin key)")
    from klingflow.app.reconcile import add_arguments as add_reconcile_arguments

    add_reconcile_arguments(reconcile)

    server = sub.add_parser("server", help="the local Prefect server klingflow runs when PREFECT_API_URL is not set")
    server.add_argument("action", choices=["status", "start", "stop"], help="say where it is, start it, or stop it")

    ledger = sub.add_parser("ledger", help="check the request ledger, or rebuild a damaged one")
    from klingflow.app.ledger_cli import add_arguments as add_ledger_arguments

    add_ledger_arguments(ledger)

    setup = sub.add_parser("setup", help="prepare a Prefect server: concurrency limit, work pool, fal-key secret")
    from klingflow.app.setup import add_arguments as add_setup_arguments

    add_setup_arguments(setup)
    return parser


# `klingflow run` option -> EditParams field: defaults, help and choices come from the field
RUN_OPTIONS: dict[str, str] = {
    "--backend": "backend",
    "--concurrency": "max_concurrency",
    "--name": "run_name",
    "--out": "output_dir",
    "--report-dir": "report_dir",
    "--state-dir": "state_dir",
    "--timeout": "job_timeout_s",
    "--poll-interval": "poll_interval_s",
    "--poll-max-interval": "poll_max_interval_s",
    "--too-long": "too_long",
    "--too-short": "too_short",
    "--extreme-aspect": "extreme_aspect",
    "--max-budget": "max_budget_usd",
    "--dry-run": "dry_run",
    "--force": "force",
    "--fail-on-job-failure": "fail_run_on_job_failure",
    "--concurrency-limit": "concurrency_limit",
    "--time-scale": "simulator_time_scale",
    "--settle-window": "settle_window_s",
    "--fetch-timeout": "input_fetch_timeout_s",
    "--estimate-wait": "estimate_wait_s",
    "--task-runs-max": "job_task_runs_max",
    "--input-root": "input_roots",
    "--input-host": "input_hosts",
    "--allow-private-addresses": "allow_private_addresses",
}


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print each job's progress and fal's log lines (the Prefect run log always has them)",
    )


def _unoptional(annotation: object) -> object:
    """`float | None` -> float; any other annotation as it is."""
    if isinstance(annotation, types.UnionType):
        return next((t for t in get_args(annotation) if t is not type(None)), str)
    return annotation


def add_run_options(parser: argparse.ArgumentParser) -> None:
    for flag, name in RUN_OPTIONS.items():
        info = EditParams.model_fields[name]
        kind = _unoptional(info.annotation)
        default = None if info.default_factory else info.default
        default = default.value if isinstance(default, enum.Enum) else default
        help_text = f"{info.description} (default: {default})" if default is not None else info.description
        options: dict[str, object] = {"dest": name, "help": help_text, "default": None}
        if kind is bool:  # absent: None, so the field's default (which may depend on the run) applies
            options |= {"action": "store_true", "help": info.description}
        elif get_origin(kind) is list:
            options |= {"action": "append", "metavar": flag.removeprefix("--").replace("-", "_").upper()}
            options["help"] = f"{info.description} (repeat the option for several)"
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            options["choices"] = [member.value for member in kind]
        else:
            options["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
            if kind in (int, float):
                options["type"] = kind
        parser.add_argument(flag, **options)


def params_from_args(args: argparse.Namespace) -> EditParams:
    """The run's parameters: the options given, EditParams' defaults for the rest (ValueError: one line
    naming each bad option)."""
    given = {name: value for name in RUN_OPTIONS.values() if (value := getattr(args, name)) is not None}
    try:
        return EditParams(manifest=args.manifest, **given)
    except ValidationError as exc:
        flags = {name: flag for flag, name in RUN_OPTIONS.items()}
        problems = [
            f"{flags.get(str(error['loc'][0]), error['loc'][0]) if error['loc'] else 'options'} "
            f"{error['input']!r}: {error['msg'][0].lower()}{error['msg'][1:]}"
            for error in exc.errors(include_url=False)
        ]
        raise ValueError("; ".join(problems)) from None


def key_problem(params: EditParams) -> str | None:
    """Why a run on the real fal cannot start for want of a key, said before preprocessing starts, and before
    Prefect starts unless klingflow's local server (which the run starts anyway) may hold the `fal-key` block."""
    if params.backend is not Backend.fal:
        return None
    from klingflow.app.local_prefect import LocalServer, LocalServerError, prefect_api
    from klingflow.fal.backend import resolve_fal_key

    key = resolve_fal_key()  # the environment, or the block of the server at PREFECT_API_URL
    if not key and not os.environ.get("PREFECT_API_URL") and (LocalServer.default().root / "home").exists():
        try:
            with prefect_api():
                key = resolve_fal_key()
        except LocalServerError:
            return None  # the run says why the server cannot start
    if key:
        return None
    return (
        "--backend fal needs a fal key: set FAL_KEY, or store it with `FAL_KEY=... klingflow setup "
        "--fal-key-from-env` (a Prefect Secret block 'fal-key')"
    )


def run_flow(params: EditParams, *, verbose: bool = False) -> int:
    """Run the flow in this process with a progress bar; map its outcome to an exit code."""
    from prefect.exceptions import TerminationSignal

    from klingflow.app.runner import Outcome, run_with_progress

    async def run() -> Outcome:
        outcome = await run_with_progress(params, verbose=verbose)
        if outcome.orchestrator_down:  # the report is on disk; Prefect's services would retry a dead server for
            sys.stdout.flush()  # minutes, here and in asyncio's and the interpreter's teardown: leave now
            sys.stderr.flush()
            os._exit(exit_code(outcome.signum, outcome.summary))
        return outcome

    try:
        outcome = asyncio.run(run())
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        print("klingflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TerminationSignal:  # a second SIGTERM: stopped at once
        print("klingflow: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    return exit_code(outcome.signum, outcome.summary)


def exit_code(signum: int | None, summary: object | None) -> int:
    """The documented exit code of a run (see the module docstring)."""
    if signum is not None:
        return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED
    if summary is None:
        return EXIT_CANNOT_RUN
    return EXIT_OK if getattr(summary, "all_succeeded", False) else EXIT_JOBS_FAILED


def run_server(action: str) -> int:
    """`klingflow server status|start|stop` for klingflow's local Prefect server (klingflow.app.local_prefect)."""
    from klingflow.app.local_prefect import LocalServer, LocalServerError

    server = LocalServer.default()
    if action == "stop":
        print("stopped the local Prefect server" if server.stop() else "no local Prefect server was running")
        return EXIT_OK
    if action == "start":
        try:
            url = server.ensure()
        except LocalServerError as exc:
            print(f"klingflow: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN
    elif (url := server.running_url()) is None:
        print(f"no local Prefect server is running (it starts with the first `klingflow run`; files in {server.root})")
        return EXIT_OK
    print(f"local Prefect server: API {url}, UI {url.removesuffix('/api')} (files in {server.root})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    # No host but the package registries is reachable here, and Prefect's telemetry heartbeat only
    # adds "database is locked" noise to ephemeral runs: off unless the user set it.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    if args.command in ("run", "validate"):
        try:
            params = params_from_args(args)
        except ValueError as exc:
            print(f"klingflow: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN
    if args.command == "validate":
        from klingflow.app.validate import run as run_validate

        return run_validate(args, params)
    if args.command == "run":
        if problem := key_problem(params):
            if not params.dry_run:
                print(f"klingflow: {problem}", file=sys.stderr)
                return EXIT_CANNOT_RUN
            print(
                f"klingflow: warning: {problem}; this dry run sends nothing, a real run would stop here",
                file=sys.stderr,
            )
        return run_flow(params, verbose=args.verbose)
    if args.command == "demo":
        from klingflow.app.demo import run_demo

        return run_demo(
            time_scale=args.time_scale, output_dir=args.out, report_dir=args.report_dir, verbose=args.verbose
        )
    if args.command == "simulator":
        from klingflow.simulator.cli import run as run_simulator

        return run_simulator(args)
    if args.command == "server":
        return run_server(args.action)
    if args.command == "reconcile":
        from klingflow.app.reconcile import run as run_reconcile

        return run_reconcile(args)
    if args.command == "ledger":
        from klingflow.app.ledger_cli import run as run_ledger

        return run_ledger(args)
    if args.command == "setup":
        from klingflow.app.setup import run as run_setup

        return run_setup(args)
    from klingflow.report.cli import run as run_report

    return run_report(args)


if __name__ == "__main__":
    sys.exit(main())
