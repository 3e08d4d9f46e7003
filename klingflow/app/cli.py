"""`klingflow` command line: run a manifest, run the demo, run the simulator, read reports.

Exit codes of `run` and `demo`: 0 every job succeeded (or was reused, or dry run); 1 at least one
job failed, was cancelled or skipped by the budget; 2 the run could not start (bad manifest,
parameters or backend); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from klingflow.models import AspectPolicy, Backend, EditParams, TooLongPolicy, TooShortPolicy

EXIT_OK, EXIT_JOBS_FAILED, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klingflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the edits of a manifest")
    run.add_argument("manifest", help="manifest file (.csv, .jsonl, .yaml)")
    add_run_options(run)

    demo = sub.add_parser("demo", help="generate the demo inputs and run data/demo/manifest.csv on the simulator")
    demo.add_argument("--time-scale", type=float, default=1.0, help="simulator seconds per video second")
    demo.add_argument("--out", default="outputs", help="output directory")
    demo.add_argument("--report-dir", default="reports", help="report directory")

    sim = sub.add_parser("simulator", help="run the local fal simulator")
    from klingflow.simulator.cli import add_arguments as add_simulator_arguments

    add_simulator_arguments(sim)

    rep = sub.add_parser("report", help="summarize the report history")
    from klingflow.report.cli import add_arguments as add_report_arguments

    add_report_arguments(rep)

    setup = sub.add_parser("setup", help="prepare a Prefect server: concurrency limit, work pool, fal-key secret")
    from klingflow.app.setup import add_arguments as add_setup_arguments

    add_setup_arguments(setup)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    fields = EditParams.model_fields
    parser.add_argument(
        "--backend", choices=[b.value for b in Backend], default=Backend.auto.value, help=fields["backend"].description
    )
    parser.add_argument(
        "--concurrency", type=int, default=fields["max_concurrency"].default, help=fields["max_concurrency"].description
    )
    parser.add_argument("--out", default=fields["output_dir"].default, help=fields["output_dir"].description)
    parser.add_argument("--report-dir", default=fields["report_dir"].default, help=fields["report_dir"].description)
    parser.add_argument("--state-dir", default=None, help=fields["state_dir"].description)
    parser.add_argument(
        "--timeout", type=float, default=fields["job_timeout_s"].default, help=fields["job_timeout_s"].description
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=fields["poll_interval_s"].default,
        help=fields["poll_interval_s"].description,
    )
    parser.add_argument(
        "--poll-max-interval",
        type=float,
        default=fields["poll_max_interval_s"].default,
        help=fields["poll_max_interval_s"].description,
    )
    parser.add_argument(
        "--too-long",
        choices=[p.value for p in TooLongPolicy],
        default=TooLongPolicy.trim.value,
        help=fields["too_long"].description,
    )
    parser.add_argument(
        "--too-short",
        choices=[p.value for p in TooShortPolicy],
        default=TooShortPolicy.reject.value,
        help=fields["too_short"].description,
    )
    parser.add_argument(
        "--extreme-aspect",
        choices=[p.value for p in AspectPolicy],
        default=AspectPolicy.reject.value,
        help=fields["extreme_aspect"].description,
    )
    parser.add_argument("--max-budget", type=float, default=None, help=fields["max_budget_usd"].description)
    parser.add_argument("--dry-run", action="store_true", help=fields["dry_run"].description)
    parser.add_argument("--force", action="store_true", help=fields["force"].description)
    parser.add_argument(
        "--concurrency-limit", default=fields["concurrency_limit"].default, help=fields["concurrency_limit"].description
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=fields["simulator_time_scale"].default,
        help=fields["simulator_time_scale"].description,
    )
    parser.add_argument(
        "--settle-window",
        type=float,
        default=fields["settle_window_s"].default,
        help=fields["settle_window_s"].description,
    )


def params_from_args(args: argparse.Namespace) -> EditParams:
    values = {
        "manifest": args.manifest,
        "backend": args.backend,
        "max_concurrency": args.concurrency,
        "output_dir": args.out,
        "report_dir": args.report_dir,
        "job_timeout_s": args.timeout,
        "poll_interval_s": args.poll_interval,
        "poll_max_interval_s": args.poll_max_interval,
        "too_long": args.too_long,
        "too_short": args.too_short,
        "extreme_aspect": args.extreme_aspect,
        "max_budget_usd": args.max_budget,
        "dry_run": args.dry_run,
        "force": args.force,
        "concurrency_limit": args.concurrency_limit,
        "simulator_time_scale": args.time_scale,
        "settle_window_s": args.settle_window,
    }
    if args.state_dir:
        values["state_dir"] = args.state_dir
    return EditParams(**values)


def run_flow(params: EditParams) -> int:
    """Run the flow in this process with a progress bar; map its outcome to an exit code."""
    from klingflow.app.runner import run_with_progress

    try:
        summary = asyncio.run(run_with_progress(params))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary is None:
        return EXIT_CANNOT_RUN
    return EXIT_OK if summary.all_succeeded else EXIT_JOBS_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    # No host but the package registries is reachable here, and Prefect's telemetry heartbeat only
    # adds "database is locked" noise to ephemeral runs: off unless the user set it.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    if args.command == "run":
        try:
            params = params_from_args(args)
        except ValueError as exc:
            print(f"klingflow: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN
        return run_flow(params)
    if args.command == "demo":
        from klingflow.app.demo import run_demo

        return run_demo(time_scale=args.time_scale, output_dir=args.out, report_dir=args.report_dir)
    if args.command == "simulator":
        from klingflow.simulator.cli import run as run_simulator

        return run_simulator(args)
    if args.command == "setup":
        from klingflow.app.setup import run as run_setup

        return run_setup(args)
    from klingflow.report.cli import run as run_report

    return run_report(args)


if __name__ == "__main__":
    sys.exit(main())
