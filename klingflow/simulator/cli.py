"""Command line: `klingflow simulator ...` (wired by the lead) and `python -m klingflow.simulator ...`.

Prints the base URL on stdout (one line, so scripts can read it) and serves until Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from klingflow.simulator.auth import DEFAULT_ADMIN_KEY, key_id
from klingflow.simulator.config import ROUTE_KINDS, FaultConfig, SimulatorConfig
from klingflow.simulator.server import Simulator

# CLI flag -> RouteFaults field; each takes ROUTE=VALUE (ROUTE: one of ROUTE_KINDS or "all").
ROUTE_FLAGS = {
    "fault_429": "http_429",
    "fault_5xx": "ingress_5xx",
    "fault_500": "http_500",
    "fault_drop": "drop",
    "fault_drop_after": "drop_after",
    "fault_max": "max_count",
}

FLAG_HELP = {
    "http_429": "rate of 429 + Retry-After (retried by fal_client)",
    "ingress_5xx": "rate of nginx 502/503 (retried by fal_client)",
    "http_500": "rate of plain 500 (not retried)",
    "drop": "rate of connections dropped before the route acts",
    "drop_after": "rate of connections dropped after the route acted (submit: duplicate paid job)",
    "max_count": "at most this many faults on the route",
}


def default_state_dir() -> Path:
    """$KLINGFLOW_HOME/simulator (default ~/.klingflow/simulator)."""
    return Path(os.environ.get("KLINGFLOW_HOME", "~/.klingflow")).expanduser() / "simulator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to a parser."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument("--state-dir", type=Path, default=None, help="storage, ledger and request table")
    parser.add_argument("--time-scale", type=float, default=1.0, help="processing seconds per input second")
    parser.add_argument("--concurrency", type=int, default=2, help="requests IN_PROGRESS at once per key")
    parser.add_argument("--retention", type=float, default=3600.0, help="seconds results stay fetchable")
    parser.add_argument("--fast-copy", action="store_true", help="remux instead of editing (load tests)")
    parser.add_argument("--log-interval", type=float, default=0.5, help="seconds between job log lines")
    parser.add_argument(
        "--history-lag", type=float, default=0.0, help="seconds after its start before a request is in the history"
    )
    parser.add_argument("--seed", type=int, default=0, help="fault-injection RNG seed")
    money = parser.add_argument_group("pricing and billing (fal's Platform API)")
    money.add_argument(
        "--discount", action="append", default=[], metavar="KEY=PERCENT", help="percent off the list price for a key"
    )
    money.add_argument(
        "--admin-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"a key allowed on billing events and usage (repeatable; default {DEFAULT_ADMIN_KEY})",
    )
    money.add_argument("--billing-delay", type=float, default=0.0, help="seconds before a charge is listed")
    money.add_argument(
        "--tagged-billing-delay", type=float, default=0.0, help="further seconds before tagged-billed lists it"
    )
    hooks = parser.add_argument_group("webhooks and synchronous runs")
    hooks.add_argument("--webhook-retries", type=int, default=10, help="retries of a failed webhook delivery")
    hooks.add_argument("--webhook-retry-base", type=float, default=15.0, help="first retry delay, doubled each time")
    hooks.add_argument("--webhook-retry-max", type=float, default=1800.0, help="cap on one webhook retry delay")
    hooks.add_argument("--webhook-timeout", type=float, default=15.0, help="seconds to wait for a webhook answer")
    hooks.add_argument("--sync-run-timeout", type=float, default=3600.0, help="seconds a /run request may take")
    faults = parser.add_argument_group(f"fault injection (ROUTE is one of {', '.join(ROUTE_KINDS)} or all)")
    faults.add_argument("--fault-config", type=Path, help="FaultConfig JSON file (flags below override it)")
    for flag, field in ROUTE_FLAGS.items():
        option = "--" + flag.replace("_", "-")
        faults.add_argument(
            option, dest=flag, action="append", default=[], metavar="ROUTE=VALUE", help=FLAG_HELP[field]
        )
    faults.add_argument("--fault-retry-after", type=int, help="Retry-After seconds sent with 429s")
    faults.add_argument("--fault-job-failure-rate", type=float, help="share of jobs that fail (500)")
    faults.add_argument("--fault-job-hang-rate", type=float, help="share of jobs that never finish")
    faults.add_argument("--fault-fail-prompt", action="append", default=[], help="fail jobs whose prompt contains this")
    faults.add_argument("--fault-hang-prompt", action="append", default=[], help="hang jobs whose prompt contains this")
    faults.add_argument(
        "--fault-reject-prompt", action="append", default=[], help="422 (content policy) for prompts containing this"
    )
    faults.add_argument("--fault-slow-download-rate", type=float, help="share of file downloads throttled")
    faults.add_argument("--fault-slow-download-bps", type=int, help="throttled download speed, bytes/s")
    faults.add_argument(
        "--fault-cancel-running-completes-rate",
        type=float,
        help="share of cancels of running requests that are ignored (the request completes and is billed)",
    )
    faults.add_argument("--fault-invalid-billed-rate", type=float, help="share of 422 (invalid input) results billed")


def faults_from_args(args: argparse.Namespace) -> FaultConfig:
    """The FaultConfig described by --fault-* options (raises ValueError/ValidationError if invalid)."""
    data: dict[str, Any] = {}
    if args.fault_config:
        data = FaultConfig.model_validate_json(args.fault_config.read_text()).model_dump()
    for flag, field in ROUTE_FLAGS.items():
        for spec in getattr(args, flag):
            route, sep, value = spec.partition("=")
            if not sep or route not in (*ROUTE_KINDS, "all"):
                raise ValueError(f"--{flag.replace('_', '-')} expects ROUTE=VALUE with ROUTE in {ROUTE_KINDS} or all")
            for kind in ROUTE_KINDS if route == "all" else (route,):
                data.setdefault(kind, {})[field] = int(value) if field == "max_count" else float(value)
    scalars = {
        "retry_after_s": args.fault_retry_after,
        "job_failure_rate": args.fault_job_failure_rate,
        "job_hang_rate": args.fault_job_hang_rate,
        "slow_download_rate": args.fault_slow_download_rate,
        "slow_download_bytes_per_s": args.fault_slow_download_bps,
        "cancel_running_completes_rate": args.fault_cancel_running_completes_rate,
        "invalid_billed_rate": args.fault_invalid_billed_rate,
    }
    data.update({k: v for k, v in scalars.items() if v is not None})
    data["fail_prompts_containing"] = [*data.get("fail_prompts_containing", []), *args.fault_fail_prompt]
    data["hang_prompts_containing"] = [*data.get("hang_prompts_containing", []), *args.fault_hang_prompt]
    data["reject_prompts_containing"] = [*data.get("reject_prompts_containing", []), *args.fault_reject_prompt]
    return FaultConfig.model_validate(data)


def discounts_from_args(specs: list[str]) -> dict[str, float]:
    """--discount KEY=PERCENT options as key id -> percent (the raw key is not kept)."""
    discounts = {}
    for spec in specs:
        key, sep, percent = spec.rpartition("=")
        if not sep or not key:
            raise ValueError("--discount expects KEY=PERCENT")
        discounts[key_id(key)] = float(percent)
    return discounts


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig described by the parsed options."""
    admins = {"admin_key_ids": [key_id(k) for k in args.admin_key]} if args.admin_key else {}
    return SimulatorConfig(
        key_discounts=discounts_from_args(args.discount),
        billing_events_delay_s=args.billing_delay,
        tagged_billing_delay_s=args.tagged_billing_delay,
        webhook_retries=args.webhook_retries,
        webhook_retry_base_s=args.webhook_retry_base,
        webhook_retry_max_s=args.webhook_retry_max,
        webhook_timeout_s=args.webhook_timeout,
        sync_run_timeout_s=args.sync_run_timeout,
        **admins,
        state_dir=args.state_dir or default_state_dir(),
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        concurrency_per_key=args.concurrency,
        result_retention_s=args.retention,
        fast_copy=args.fast_copy,
        log_interval_s=args.log_interval,
        history_lag_s=args.history_lag,
        faults=faults_from_args(args),
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad options."""
    try:
        config = config_from_args(args)
    except (ValueError, ValidationError, OSError) as exc:
        print(f"klingflow.simulator: invalid options: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    sim = Simulator(config).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(sim.url, flush=True)
        print(
            f"klingflow.simulator: serving {config.state_dir} (started in {time.monotonic() - started:.2f} s, "
            f"time_scale={config.time_scale}, concurrency={config.concurrency_per_key}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m klingflow.simulator`."""
    parser = argparse.ArgumentParser(
        prog="python -m klingflow.simulator", description="Local fal.ai simulator for Kling O3 edit"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
