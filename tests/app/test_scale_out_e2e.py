"""Scale-out for real: a Prefect server on PostgreSQL, two process workers with their own KLINGFLOW_HOMEs
that share only the PostgreSQL request ledger, one standalone simulator; one 20-job manifest triggered twice
at once through the deployment. The PostgreSQL cluster is the throwaway one of tests/pgcluster.py.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from klingflow.ledger.store import RequestLedger
from klingflow.media.synth import make_clip
from tests.app.test_deployment_e2e import (
    BIN,
    POOL,
    REPO,
    SERVER_START_TIMEOUT_S,
    Stack,
    _clean_env,
    _deployment,
    _free_port,
    _tail,
    _trigger,
    _wait_finished,
    _wait_http,
    _wait_workers,
    stop_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIMIT = 2
JOBS = 20
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, pg_cluster) -> Iterator[tuple[Stack, str]]:
    """Server (on PostgreSQL) + simulator + setup + deploy + two workers; yields the stack and the ledger URL."""
    root = tmp_path_factory.mktemp("scale-out-e2e")
    (root / "logs").mkdir()
    marker = uuid.uuid4().hex
    ledger_url = pg_cluster.url(pg_cluster.create_database("ledger"))
    env = _clean_env(root, marker)
    env["KLINGFLOW_HOME"] = str(root / "home-control")  # setup's; each worker gets its own below, none shared
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg_cluster.url(pg_cluster.create_database("prefect"), "asyncpg")
    env["KLINGFLOW_DATABASE_URL"] = ledger_url
    stack = Stack(root=root, env=env)
    try:
        _start(stack)
        yield stack, ledger_url
    finally:
        stop_stack(stack, marker)


def _start(stack: Stack) -> None:
    api_port, sim_port = _free_port(), _free_port()
    stack.api, stack.sim = f"http://127.0.0.1:{api_port}/api", f"http://127.0.0.1:{sim_port}"
    stack.env["PREFECT_API_URL"] = stack.api
    prefect = str(BIN / "prefect")
    server = stack.start(
        "server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(api_port), "--no-ui"]
    )
    sim_args = ["--port", str(sim_port), "--state-dir", str(stack.root / "sim-state"), "--time-scale", "0.1"]
    sim = stack.start("simulator", [sys.executable, "-m", "klingflow.simulator", *sim_args, "--concurrency", "8"])
    _wait_http(f"{stack.sim}/_simulator/health", stack, sim, 30)
    _wait_http(f"{stack.api}/health", stack, server, SERVER_START_TIMEOUT_S)
    setup = [sys.executable, "-m", "klingflow.app.setup", "--concurrency", str(LIMIT), "--no-demo-media"]
    stack.run("setup", [*setup, "--fal-key-from-env"], FAL_KEY=stack.fal_key)
    stack.run("deploy", [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")])
    for name in WORKERS:
        worker = [prefect, "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"]
        home = str(stack.root / f"home-{name}")  # the worker's own caches (uploads, transcodes)
        stack.start(
            name, [*worker, "--install-policy", "never"], KLINGFLOW_SIMULATOR_URL=stack.sim, KLINGFLOW_HOME=home
        )
    _wait_workers(stack, set(WORKERS))


def _manifest(media: Path) -> Path:
    clip = make_clip(media / "clip.mp4", seconds=3, width=640, height=360)
    rows = [{"id": f"job-{i}", "prompt": f"Scale-out edit {i} of @Video1", "video": str(clip)} for i in range(JOBS)]
    path = media / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_one_manifest_twice_on_two_workers_bills_each_job_once(pg_stack: tuple[Stack, str]) -> None:
    """The same 20 jobs triggered twice at once on two workers sharing only the PostgreSQL ledger: each job
    billed once, the two reports together carry every bill, the global limit held exactly."""
    stack, ledger_url = pg_stack
    manifest, shared = _manifest(stack.root / "media"), stack.root / "shared"  # `shared`: what all machines see
    deployment = _deployment(stack, "edit_videos/edit-videos-adhoc")
    params = {
        "manifest": str(manifest),
        "backend": "simulator",
        "max_concurrency": LIMIT,
        "poll_interval_s": 0.2,
        "poll_max_interval_s": 0.5,
        "job_timeout_s": 120,
    }
    runs = [
        _trigger(
            stack,
            deployment["id"],
            {**params, "output_dir": str(shared / f"out-{i}"), "report_dir": str(shared / f"rep-{i}")},
        )
        for i in (0, 1)
    ]
    finished = _wait_finished(stack, runs)

    assert all(r["state"]["type"] == "COMPLETED" for r in finished.values()), f"{finished}\n{stack.logs()}"
    a, b = (finished[r] for r in runs)
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"], "the two runs did not overlap"
    ran = {name for name in WORKERS if "flow run" in _tail(stack.log(name), 400).lower()}
    assert ran == set(WORKERS), f"each worker should have run one flow run\n{stack.logs()}"

    bills = httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()
    per_prompt = Counter(e["input"]["prompt"] for e in bills)
    assert len(per_prompt) == JOBS and set(per_prompt.values()) == {1}, per_prompt
    reports = pd.concat(pd.read_parquet(shared / f"rep-{i}") for i in (0, 1))
    assert len(reports) == 2 * JOBS and (reports["status"] == "succeeded").all(), reports[["job_id", "status"]]
    assert set(reports["request_id"]) == {e["request_id"] for e in bills}
    assert round(reports["cost_usd"].sum(), 4) == round(sum(float(e["cost_usd"]) for e in bills), 4)
    assert all(Path(p).is_file() for p in reports["output_path"])

    peaks = [
        key["max_in_flight"]
        for key in httpx.get(f"{stack.sim}/_simulator/counters", timeout=10).json()["keys"].values()
    ]
    assert max(peaks) == LIMIT, f"max in flight {peaks} (limit {LIMIT})"

    with RequestLedger(stack.root / "unused", "simulator", url=ledger_url) as ledger:
        assert len(ledger.entries()) == JOBS
    assert not list(stack.root.glob("home-*/requests/*.sqlite")), "a worker used a local SQLite ledger"
