"""`klingflow setup`: prepare a Prefect server for klingflow's deployments (idempotent; run it again any time).

Creates the global concurrency limit that caps requests in flight at fal across every worker, or
raises it (an existing higher limit is kept unless `--lower`: other runs may rely on it), creates
the process work pool the deployments in prefect.yaml target, optionally stores the fal key as the
Prefect Secret block `fal-key` and the admin key as `fal-admin-key` (read from FAL_KEY and
FAL_ADMIN_KEY so they never appear in shell history, parameters or logs), and generates the demo media the ad-hoc
deployment's default manifest points at.

Also home of `enter_repo`, the pull step of prefect.yaml's deployments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from klingflow.app.local_prefect import prefect_api
from klingflow.fal.backend import FAL_ADMIN_KEY_SECRET_BLOCK, FAL_KEY_SECRET_BLOCK, key_fingerprint

DEFAULT_LIMIT_NAME = "klingflow-fal"
DEFAULT_POOL = "klingflow-process"
DEFAULT_CONCURRENCY = 2
REPO_ENV = "KLINGFLOW_REPO"
REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_CANNOT_RUN = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `klingflow setup` (also `python -m klingflow.app.setup`)."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at fal across all workers (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--limit-name",
        default=DEFAULT_LIMIT_NAME,
        help=f"global concurrency limit (default {DEFAULT_LIMIT_NAME}; the flows' concurrency_limit)",
    )
    parser.add_argument(
        "--lower",
        action="store_true",
        help="allow lowering an existing limit to --concurrency (without it, a higher limit is kept)",
    )
    parser.add_argument("--pool", default=DEFAULT_POOL, help=f"process work pool name (default {DEFAULT_POOL})")
    parser.add_argument(
        "--fal-key-from-env",
        action="store_true",
        help=f"store $FAL_KEY as the Prefect Secret block {FAL_KEY_SECRET_BLOCK!r} (never printed)",
    )
    parser.add_argument(
        "--fal-admin-key-from-env",
        action="store_true",
        help=f"store $FAL_ADMIN_KEY (for `klingflow reconcile`) as the Secret block {FAL_ADMIN_KEY_SECRET_BLOCK!r}",
    )
    parser.add_argument(
        "--no-demo-media",
        action="store_true",
        help="do not generate data/demo/media (the ad-hoc deployment's default manifest uses it)",
    )


def run(args: argparse.Namespace) -> int:
    """Apply the setup to the Prefect server at PREFECT_API_URL (else klingflow's local server); 0 when done,
    2 when it cannot."""
    if args.concurrency < 1:
        print("setup: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_CANNOT_RUN
    asked = [(FAL_KEY_SECRET_BLOCK, "FAL_KEY")] if args.fal_key_from_env else []
    asked += [(FAL_ADMIN_KEY_SECRET_BLOCK, "FAL_ADMIN_KEY")] if args.fal_admin_key_from_env else []
    secrets: dict[str, str] = {}
    for block, variable in asked:
        if not (value := os.environ.get(variable)):
            print(f"setup: storing {block!r} was asked for but {variable} is not set", file=sys.stderr)
            return EXIT_CANNOT_RUN
        secrets[block] = value
    try:
        with prefect_api() as local:
            print(f"setup: Prefect API {_api_url()}{' (klingflow local server)' if local else ''}")
            print(asyncio.run(ensure_limit(args.limit_name, args.concurrency, lower=args.lower)))
            print(asyncio.run(ensure_work_pool(args.pool)))
            for block, value in secrets.items():
                print(save_secret(block, value))
    except Exception as exc:  # noqa: BLE001 - report any server/API failure as one line and a non-zero exit
        print(f"setup: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if not args.no_demo_media:
        from klingflow.app.demo import ensure_demo_media

        print(f"setup: demo media in {ensure_demo_media()}")
    return EXIT_OK


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


async def ensure_limit(name: str, limit: int, *, lower: bool = False) -> str:
    """Create the global concurrency limit, or raise an existing one to `limit` and make it active.

    An existing higher limit is kept unless `lower`: other runs and workers may rely on it.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return f"setup: created global concurrency limit {name!r} = {limit}"
        wanted = limit if lower or limit > existing.limit else existing.limit
        note = f"; kept, not lowered to {limit} (pass --lower to lower it)" if wanted != limit else ""
        if existing.limit == wanted and existing.active:
            return f"setup: global concurrency limit {name!r} = {wanted} (unchanged{note})"
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=wanted, active=True))
        return f"setup: global concurrency limit {name!r}: {existing.limit} -> {wanted}{note}"


async def ensure_work_pool(name: str) -> str:
    """Create the process work pool (with Prefect's default process job template) unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return f"setup: created process work pool {name!r}"
        if pool.type != "process":
            raise ValueError(f"work pool {name!r} exists with type {pool.type!r}, not 'process'")
        return f"setup: process work pool {name!r} exists"


def save_secret(block: str, key: str) -> str:
    """Store a key as a Secret block (`fal-key`, `fal-admin-key`); the message shows only a fingerprint."""
    from prefect.blocks.system import Secret

    Secret(value=key).save(block, overwrite=True)
    return f"setup: saved Secret block {block!r} (key fingerprint {key_fingerprint(key)})"


def enter_repo(directory: str | None = None) -> dict[str, str]:
    """Pull step: make this checkout the flow run's working directory.

    Uses `directory`, else $KLINGFLOW_REPO, else the checkout this klingflow is imported from (the
    editable install of the worker's clone). Unlike a path written into the deployment at deploy
    time, this is right for every worker, wherever its clone lives.
    """
    target = Path(directory or os.environ.get(REPO_ENV) or REPO_ROOT).expanduser().resolve()
    if not (target / "flows" / "edit_videos.py").is_file():
        raise FileNotFoundError(f"{target} is not a klingflow checkout (no flows/edit_videos.py); set {REPO_ENV}")
    os.chdir(target)
    return {"directory": str(target)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m klingflow.app.setup", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
