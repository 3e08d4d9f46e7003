"""`klingflow ledger check|rebuild`: what the request ledger holds, and a fresh one from a damaged file.

Exit codes: `check` 0 healthy, 1 damaged, 2 the ledger could not be read at all (database unreachable);
`rebuild` 0 rebuilt (or nothing to rebuild), 2 it cannot (a PostgreSQL ledger is repaired by its server).
The logic is klingflow.ledger.repair.
"""

from __future__ import annotations

import argparse
import os
import sys

import sqlalchemy as sa

from klingflow.errors import KlingflowError
from klingflow.ledger import repair
from klingflow.ledger.schema import DATABASE_URL_ENV, LedgerSettings, ledger_file, safe_url, sqlite_file
from klingflow.models import Backend, default_state_dir

EXIT_HEALTHY, EXIT_DAMAGED, EXIT_CANNOT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ledger_action", required=True)
    check = actions.add_parser("check", help="say what the request ledger holds and whether it is damaged")
    rebuild = actions.add_parser(
        "rebuild", help="move a damaged SQLite ledger aside and keep every entry that can still be read"
    )
    for action in (check, rebuild):
        action.add_argument(
            "--state-dir",
            default=None,
            metavar="STATE_DIR",
            help="the runs' state folder, whose requests/ledger.sqlite is the ledger (default: KLINGFLOW_HOME)",
        )
    check.add_argument(
        "--backend",
        choices=[b.value for b in Backend if b is not Backend.auto],
        default=None,
        help="only this backend's entries (default: every backend's)",
    )


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or default_state_dir()
    url = LedgerSettings.from_env(dict(os.environ)).url
    if args.ledger_action == "check":
        return _check(state_dir, url, args.backend)
    return _rebuild(state_dir, url)


def _check(state_dir: str, url: str | None, backend: str | None) -> int:
    try:
        health = repair.check(state_dir, url)
    except (KlingflowError, OSError) as exc:
        print(f"klingflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT
    except sa.exc.SQLAlchemyError as exc:  # an unreachable database: one line, not a traceback
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
        print(f"klingflow: the request ledger {_where(url, state_dir)} cannot be read: {reason}", file=sys.stderr)
        return EXIT_CANNOT
    if not health.exists:
        print(f"request ledger {health.where}: none yet (no run has used this state folder)")
        return EXIT_HEALTHY
    salvage = health.salvage
    print(f"request ledger {health.where}: {'DAMAGED' if health.damaged else 'healthy'}")
    states = health.states(backend)
    for namespace, counts in states.items():
        listed = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"  {namespace}: {sum(counts.values())} entries ({listed})")
    if not states:
        print(f"  no entries{f' for {backend}' if backend else ''}")
    print(f"  bills pending report: {health.pending_bills(backend)}")
    print(f"  damaged rows: {salvage.unparsed} (entries that do not parse)")
    for problem in salvage.problems:
        print(f"  damage: {problem}")
    if health.damaged:
        print(f"  {health.remedy or 'repair the database with its own tools'}")
        return EXIT_DAMAGED
    return EXIT_HEALTHY


def _where(url: str | None, state_dir: str) -> str:
    return safe_url(url) if url else str(ledger_file(state_dir))


def _rebuild(state_dir: str, url: str | None) -> int:
    if url and sqlite_file(url) is None:
        print(
            f"klingflow: the request ledger is the database at {_where(url, state_dir)} ({DATABASE_URL_ENV}); "
            "rebuild is for the SQLite ledger of a state folder: a PostgreSQL database is checked and repaired by "
            "its server's tools",
            file=sys.stderr,
        )
        return EXIT_CANNOT
    try:
        done = repair.rebuild(state_dir)
    except (KlingflowError, OSError) as exc:
        print(f"klingflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT
    if done.moved_to is None:
        said = "is healthy" if done.path.exists() else "does not exist yet"
        print(f"request ledger {done.path} {said}: nothing to rebuild")
        return EXIT_HEALTHY
    salvage = done.salvage
    print(f"moved the damaged ledger to {done.moved_to}")
    print(
        f"rebuilt {done.path}: kept {done.kept} entries ({done.pending_bills} bills pending report), "
        f"dropped {salvage.unparsed} that did not parse"
    )
    for problem in salvage.problems:
        print(f"  damage: {problem}")
    print(
        "the next run adopts from fal's request history (last 24 h) the work the salvage could not keep: "
        "what fal already did is downloaded, not paid again"
    )
    return EXIT_HEALTHY
