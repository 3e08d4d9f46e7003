"""Deployments for real: `prefect server start`, the setup command, `prefect deploy`, two process workers
and runs triggered through the REST API exactly as the UI's "Custom run" form does it.

Everything is a real subprocess on loopback ports with its own PREFECT_HOME (SQLite) and a standalone
simulator (`python -m klingflow.simulator`); the workers run the flows from this checkout through the pull step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest

from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.media.synth import make_clip
from klingflow.pipeline.job import INTERRUPT_CANCEL_ATTEMPTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "klingflow-process"
LIMIT = 2
JOBS_PER_RUN = 4
SERVER_START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    """The running server, simulator and workers, with their logs (for failure messages)."""

    root: Path
    env: dict[str, str]
    api: str = ""
    sim: str = ""
    fal_key: str = field(default_factory=lambda: f"e2e-key-{uuid.uuid4().hex}", repr=False)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        """Start a long-lived process in its own process group, output to logs/<name>.log."""
        out = self.log(name).open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**self.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def run(self, name: str, argv: list[str], timeout: float = 180, **env: str) -> str:
        """Run a command to completion; fail with its output if it exits non-zero."""
        done = subprocess.run(
            argv,
            cwd=REPO,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        self.log(name).write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def logs(self) -> str:
        """The tails of every log, for assertion messages."""
        return "\n".join(f"--- {p.name} ---\n{_tail(p)}" for p in sorted((self.root / "logs").glob("*.log")))

    def stop(self) -> None:
        """SIGTERM each process group (workers first), then SIGKILL what is left."""
        for _name, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # children that outlived their parent


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stray_processes(marker: str) -> list[int]:
    """Pids of processes that carry this test's marker in their environment."""
    strays = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                strays.append(int(entry.name))
        except OSError:
            continue
    return strays


def _wait_http(url: str, stack: Stack, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}\n{stack.logs()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not healthy after {timeout} s\n{stack.logs()}")


def _clean_env(root: Path, marker: str) -> dict[str, str]:
    """This process's environment minus any Prefect/klingflow settings, plus a private PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KLINGFLOW_", "FAL_"))}
    home = root / "prefect-home"
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_PROMPT": "false",
            "KLINGFLOW_HOME": str(root / "shared-state"),  # one state_dir for both workers: a "shared filesystem"
            "KLINGFLOW_E2E_MARKER": marker,
            "NO_PROXY": "127.0.0.1,localhost",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server + simulator + setup + deploy + two workers (each runs at most one flow run at a time)."""
    root = tmp_path_factory.mktemp("deploy-e2e")
    (root / "logs").mkdir()
    marker = uuid.uuid4().hex
    stack = Stack(root=root, env=_clean_env(root, marker))
    try:
        _start_services(stack)
        yield stack
    finally:
        stop_stack(stack, marker)


def stop_stack(stack: Stack, marker: str) -> None:
    """Stop every process of the stack; kill (and fail on) any left behind after 10 s."""
    stack.stop()
    deadline = time.monotonic() + 10
    while (strays := _stray_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    assert not strays, f"processes left behind: {strays}"


def _start_services(stack: Stack) -> None:
    api_port, sim_port = _free_port(), _free_port()
    stack.api = f"http://127.0.0.1:{api_port}/api"
    stack.env["PREFECT_API_URL"] = stack.api
    server = stack.start(
        "server",
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(api_port),
            "--no-ui",
            "--analytics-off",
        ],
    )
    stack.sim = f"http://127.0.0.1:{sim_port}"
    sim = stack.start(
        "simulator",
        [
            sys.executable,
            "-m",
            "klingflow.simulator",
            "--port",
            str(sim_port),
            "--state-dir",
            str(stack.root / "sim-state"),
            "--time-scale",
            "0.5",
            "--concurrency",
            "8",
            "--log-interval",
            "0.2",
        ],
    )
    _wait_http(f"{stack.sim}/_simulator/health", stack, sim, 30)
    _wait_http(f"{stack.api}/health", stack, server, SERVER_START_TIMEOUT_S)
    stack.run(
        "setup",
        [
            sys.executable,
            "-m",
            "klingflow.app.setup",
            "--concurrency",
            str(LIMIT),
            "--fal-key-from-env",
            "--no-demo-media",
        ],
        FAL_KEY=stack.fal_key,
    )
    stack.run(
        "deploy", [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")]
    )
    for name in ("worker-1", "worker-2"):
        stack.start(
            name,
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--name",
                name,
                "--limit",
                "1",
                "--install-policy",
                "never",
            ],
            KLINGFLOW_SIMULATOR_URL=stack.sim,
        )
    _wait_workers(stack, {"worker-1", "worker-2"})


def _wait_workers(stack: Stack, names: set[str], timeout: float = 90) -> None:
    """Until every worker has sent a heartbeat (else one worker could take both runs one after the other)."""
    deadline, online = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        response = _api(stack, "POST", f"/work_pools/{POOL}/workers/filter", json={})
        online = {w["name"] for w in response.json() if w.get("status") == "ONLINE"} if response.is_success else set()
        if names <= online:
            return
        time.sleep(0.5)
    pytest.fail(f"workers online: {online}, expected {names}\n{stack.logs()}")


def _api(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    """A Prefect API call that retries what Prefect's own client retries (SQLite under load answers 503)."""
    for attempt in range(8):
        try:
            response = httpx.request(method, f"{stack.api}{path}", timeout=30, **kwargs)
            if response.status_code not in (429, 502, 503):
                return response
        except httpx.TransportError:
            if attempt == 7:
                raise
        time.sleep(0.5 * 2**attempt)
    return response


def _deployment(stack: Stack, name: str) -> dict:
    response = _api(stack, "GET", f"/deployments/name/{name}")
    assert response.status_code == 200, f"deployment {name}: {response.status_code} {response.text}"
    return response.json()


def _trigger(stack: Stack, deployment_id: str, params: dict) -> str:
    """What the UI's Custom run form does: POST the form's parameters to create_flow_run.

    The idempotency key makes a retried request (after a 503) return the run it created, never a second run.
    """
    body = {"parameters": {"params": params}, "idempotency_key": uuid.uuid4().hex}
    response = _api(stack, "POST", f"/deployments/{deployment_id}/create_flow_run", json=body)
    assert response.status_code == 201, f"create_flow_run: {response.status_code} {response.text}"
    return response.json()["id"]


def _wait_finished(stack: Stack, run_ids: list[str]) -> dict[str, dict]:
    deadline, runs = time.monotonic() + RUN_TIMEOUT_S, {}
    while time.monotonic() < deadline:
        runs = {rid: _api(stack, "GET", f"/flow_runs/{rid}").json() for rid in run_ids}
        if all(r["state"]["type"] in TERMINAL for r in runs.values()):
            return runs
        time.sleep(1)
    states = {rid: r["state"]["type"] for rid, r in runs.items()}
    pytest.fail(f"flow runs not finished after {RUN_TIMEOUT_S} s: {states}\n{stack.logs()}")


def _manifest(path: Path, clip: Path, tag: str) -> Path:
    rows = [
        json.dumps({"id": f"{tag}-{i}", "prompt": f"Run {tag}: edit {i} of @Video1", "video": str(clip)})
        for i in range(JOBS_PER_RUN)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_deploy_registers_a_form_and_a_paused_inbox_schedule(stack: Stack) -> None:
    """`prefect deploy --all` registers both deployments: a pydantic form for params, the inbox schedule paused."""
    adhoc = _deployment(stack, "edit_videos/edit-videos-adhoc")
    schema = adhoc["parameter_openapi_schema"]
    assert schema["required"] == ["params"]
    assert "EditParams" in json.dumps(schema["properties"]["params"])
    assert adhoc["parameters"]["params"] == {"manifest": "data/demo/manifest.csv", "backend": "simulator"}
    assert adhoc["pull_steps"] == [{"klingflow.app.setup.enter_repo": {}}]
    inbox = _deployment(stack, "process_inbox/edit-videos-inbox")
    assert [(s["schedule"]["interval"], s["active"]) for s in inbox["schedules"]] == [(300.0, False)]


def test_setup_is_idempotent(stack: Stack) -> None:
    """Running the setup command again changes nothing and leaves the limit and the pool as they were."""
    out = stack.run(
        "setup-again", [sys.executable, "-m", "klingflow.app.setup", "--concurrency", str(LIMIT), "--no-demo-media"]
    )
    assert f"'klingflow-fal' = {LIMIT} (unchanged)" in out and f"work pool {POOL!r} exists" in out
    limit = _api(stack, "GET", "/v2/concurrency_limits/klingflow-fal").json()
    assert (limit["limit"], limit["active"]) == (LIMIT, True)


def test_two_workers_run_concurrently_within_the_global_limit(stack: Stack) -> None:
    """Two UI-triggered runs on two workers both succeed, never exceed the GCL, and match the ledger."""
    media = stack.root / "media"
    clip = make_clip(media / "clip.mp4", seconds=3, width=1280, height=720)
    deployment = _deployment(stack, "edit_videos/edit-videos-adhoc")
    runs = {}
    for tag in ("a", "b"):
        params = {
            "manifest": str(_manifest(media / f"{tag}.jsonl", clip, tag)),
            "backend": "simulator",
            "max_concurrency": LIMIT,
            "output_dir": str(stack.root / f"outputs-{tag}"),
            "report_dir": str(stack.root / f"reports-{tag}"),
            "poll_interval_s": 0.2,
            "poll_max_interval_s": 0.5,
            "job_timeout_s": 120,
        }
        runs[tag] = _trigger(stack, deployment["id"], params)
    finished = _wait_finished(stack, list(runs.values()))

    states = {tag: finished[rid]["state"] for tag, rid in runs.items()}
    assert all(s["type"] == "COMPLETED" for s in states.values()), f"{states}\n{stack.logs()}"
    a, b = (finished[runs[t]] for t in ("a", "b"))
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"], "the two runs did not overlap"
    workers = {name for name in ("worker-1", "worker-2") if "flow run" in _tail(stack.log(name), 400).lower()}
    assert workers == {"worker-1", "worker-2"}, f"each worker should have run one flow run\n{stack.logs()}"

    counters = httpx.get(f"{stack.sim}/_simulator/counters", timeout=10).json()
    peaks = [key["max_in_flight"] for key in counters["keys"].values()]
    assert max(peaks) == LIMIT, f"max in flight {peaks} (limit {LIMIT})"

    reports = pd.concat(pd.read_parquet(stack.root / f"reports-{t}") for t in ("a", "b"))
    assert len(reports) == 2 * JOBS_PER_RUN
    assert (reports["status"] == "succeeded").all(), reports[["job_id", "status", "error"]]
    ledger = httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()
    assert set(reports["request_id"]) == {e["request_id"] for e in ledger}
    assert round(reports["cost_usd"].sum(), 2) == round(sum(float(e["cost_usd"]) for e in ledger), 2)
    assert all(Path(p).is_file() for p in reports["output_path"])


def test_fal_key_is_stored_as_a_secret_and_never_leaks(stack: Stack) -> None:
    """Setup stores FAL_KEY in the `fal-key` Secret block; it appears in no log and no run parameter."""
    response = _api(
        stack, "GET", "/block_types/slug/secret/block_documents/name/fal-key", params={"include_secrets": "true"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["value"] == stack.fal_key
    logs = "".join(p.read_text(errors="replace") for p in (stack.root / "logs").glob("*.log"))
    assert "fal-key" in logs
    assert stack.fal_key not in logs
    runs = _api(stack, "POST", "/flow_runs/filter", json={}).json()
    assert stack.fal_key not in json.dumps([r["parameters"] for r in runs])


def test_inbox_deployment_files_a_dropped_manifest(stack: Stack) -> None:
    """A run of the inbox deployment on a worker runs a dropped manifest and files it under done/."""
    inbox = stack.root / "inbox"
    (inbox / "media").mkdir(parents=True)
    make_clip(inbox / "media" / "clip.mp4", seconds=3, width=1280, height=720)
    (inbox / "drop.csv").write_text("id,prompt,video\ndrop-1,Make @Video1 sunny,media/clip.mp4\n")
    billed_before = len(httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json())
    deployment = _deployment(stack, "process_inbox/edit-videos-inbox")
    params = {
        "inbox": str(inbox),
        "settle_s": 0,
        "backend": "simulator",
        "poll_interval_s": 0.2,
        "poll_max_interval_s": 0.5,
        "output_dir": str(stack.root / "outputs-inbox"),
        "report_dir": str(stack.root / "reports-inbox"),
    }
    run_id = _trigger(stack, deployment["id"], params)

    state = _wait_finished(stack, [run_id])[run_id]["state"]
    assert state["type"] == "COMPLETED", f"{state}\n{stack.logs()}"
    sidecar = json.loads((inbox / "done" / "drop.csv.result.json").read_text())
    assert sidecar["ok"] and sidecar["summary"]["statuses"] == {"drop-1": "succeeded"}
    assert not (inbox / "drop.csv").exists()
    assert len(httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()) == billed_before + 1


@pytest.mark.parametrize("refused_in_flow", [False, True], ids=["flow-cancels", "hook-cancels"])
def test_cancelling_a_run_cancels_its_requests_at_fal(stack: Stack, refused_in_flow: bool) -> None:
    """Cancelling a run as the UI does cancels its requests still at fal (unbilled) and logs what was billed."""
    media = stack.root / f"media-cancel-{refused_in_flow}"
    clip = make_clip(media / "clip.mp4", seconds=3, width=1280, height=720)
    rows = [
        {"id": f"hang-{i}", "prompt": f"HANG {refused_in_flow} {i} of @Video1", "video": str(clip)} for i in range(3)
    ]
    rows.append({"id": "quick", "prompt": f"Make @Video1 sunny {refused_in_flow}", "video": str(clip)})
    manifest = media / "cancel.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    state_dir = stack.root / "shared-state"
    params = {
        "manifest": str(manifest),
        "backend": "simulator",
        "state_dir": str(state_dir),
        "max_concurrency": len(rows),
        "concurrency_limit": "klingflow-cancel-e2e",
        "output_dir": str(stack.root / "outputs-cancel"),
        "report_dir": str(stack.root / "reports-cancel"),
        "poll_interval_s": 0.2,
        "poll_max_interval_s": 0.5,
        "job_timeout_s": 120,
    }
    faults = httpx.get(f"{stack.sim}/_simulator/faults", timeout=10).json()
    billed_before = {e["request_id"] for e in httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()}
    hang = {**faults, "hang_prompts_containing": ["HANG"]}
    httpx.put(f"{stack.sim}/_simulator/faults", json=hang, timeout=10).raise_for_status()
    try:
        run_id = _trigger(stack, _deployment(stack, "edit_videos/edit-videos-adhoc")["id"], params)
        hanging, quick = _wait_hanging_and_billed(stack, state_dir, run_id)
        if refused_in_flow:  # every cancel the flow tries fails (500), so only the on_cancellation hook can succeed
            refusals = len(hanging) * INTERRUPT_CANCEL_ATTEMPTS
            refuse = {**hang, "cancel": {"http_500": 1.0, "max_count": refusals}}
            httpx.put(f"{stack.sim}/_simulator/faults", json=refuse, timeout=10).raise_for_status()
        response = _api(
            stack,
            "POST",
            f"/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
        )
        assert response.status_code in (200, 201), f"{response.status_code} {response.text}"
        asked = time.monotonic()
        state = _wait_finished(stack, [run_id])[run_id]["state"]
        print(f"cancel took {time.monotonic() - asked:.1f} s")  # the closing note quotes it (pytest -s)
    finally:
        httpx.put(f"{stack.sim}/_simulator/faults", json=faults, timeout=10).raise_for_status()

    assert state["type"] == "CANCELLED", f"{state}\n{stack.logs()}"
    at_fal = {r["request_id"]: r for r in httpx.get(f"{stack.sim}/_simulator/requests", timeout=10).json()}
    assert {rid: at_fal[rid]["outcome"] for rid in hanging} == dict.fromkeys(hanging, "cancelled"), stack.logs()
    billed = {e["request_id"] for e in httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()} - billed_before
    assert billed == {quick}
    entries = {e.job_id: e for e in _run_entries(state_dir, run_id)}
    assert {job: e.state for job, e in entries.items()} == {
        "hang-0": "cancelled",
        "hang-1": "cancelled",
        "hang-2": "cancelled",
        "quick": "succeeded",
    }
    assert {e.request_id for job, e in entries.items() if job != "quick"} == hanging
    assert entries["quick"].request_id == quick and entries["quick"].cost_usd
    logs = _wait_log(stack, run_id, "already billed")
    assert f"cancelled run: 1 request(s) already billed, ${entries['quick'].cost_usd:.2f}" in logs
    assert quick in logs
    hook_cancelled = {rid for rid in hanging if f"cancelled request {rid}" in logs}
    if refused_in_flow:  # otherwise either: the flow cancels when Prefect tells it in time (its ack waits 1 s)
        assert hook_cancelled == hanging, logs
    report = pd.read_parquet(stack.root / "reports-cancel", filters=[("run_id", "==", run_id)]).set_index("job_id")
    assert report["status"].to_dict() == {
        "hang-0": "cancelled",
        "hang-1": "cancelled",
        "hang-2": "cancelled",
        "quick": "succeeded",
    }
    assert set(report.loc[["hang-0", "hang-1", "hang-2"], "request_id"]) == hanging
    assert report.loc["quick", "cost_usd"] == entries["quick"].cost_usd
    assert report["cost_usd"].fillna(0).sum() == entries["quick"].cost_usd
    said = ("fal confirmed the cancel", "asked to cancel, and the next run records")  # as the ledger stood then
    assert all(any(s in report.loc[f"hang-{i}", "error"] for s in said) for i in range(3)), report["error"].to_dict()


def _wait_log(stack: Stack, run_id: str, text: str, timeout: float = 15) -> str:
    """The run's logs (as the UI shows them) once one contains `text` (the API log handler sends in batches)."""
    deadline, logs = time.monotonic() + timeout, ""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    while time.monotonic() < deadline:
        response = _api(stack, "POST", "/logs/filter", json=body)
        assert response.status_code == 200, response.text
        logs = "\n".join(entry["message"] for entry in response.json())
        if text in logs:
            return logs
        time.sleep(0.5)
    pytest.fail(f"no log of run {run_id} contains {text!r}:\n{logs}\n{stack.logs()}")


def _run_entries(state_dir: Path, run_id: str) -> list[LedgerEntry]:
    """The request-ledger entries a flow run wrote (the simulator backend's namespace)."""
    ledger = RequestLedger(state_dir / "requests", namespace="simulator")
    try:
        return [e for e in ledger.entries() if e.run_id == run_id]
    finally:
        ledger.close()


def _wait_hanging_and_billed(stack: Stack, state_dir: Path, run_id: str, timeout: float = 60) -> tuple[set[str], str]:
    """Until the run's three HANG requests are running at the simulator and its quick job has succeeded."""
    deadline, entries = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        entries = _run_entries(state_dir, run_id)
        hanging = {e.request_id for e in entries if e.job_id.startswith("hang-") and e.state == "submitted"}
        quick = [e.request_id for e in entries if e.job_id == "quick" and e.state == "succeeded"]
        if len(hanging) == 3 and quick:
            at_fal = {r["request_id"]: r for r in httpx.get(f"{stack.sim}/_simulator/requests", timeout=10).json()}
            if all(at_fal.get(rid, {}).get("status") in ("IN_QUEUE", "IN_PROGRESS") for rid in hanging):
                return {rid for rid in hanging if rid}, quick[0] or ""
        time.sleep(0.3)
    pytest.fail(f"requests not hanging after {timeout} s: {[(e.job_id, e.state) for e in entries]}\n{stack.logs()}")


def test_a_deployment_run_reads_only_its_manifests_folder_and_public_hosts(stack: Stack) -> None:
    """Whoever can trigger the deployment must not reach the worker's files or network: a row climbing out of
    the manifest's folder or naming a loopback URL fails alone, before anything is opened or paid."""
    folder, elsewhere = stack.root / "confined" / "batch", stack.root / "confined" / "elsewhere"
    inside = make_clip(folder / "clip.mp4", seconds=3, width=1280, height=720)
    make_clip(elsewhere / "clip.mp4", seconds=3, width=1280, height=720)
    rows = [
        {"id": "inside", "prompt": "Make @Video1 sunny (confined)", "video": inside.name},
        {"id": "climb", "prompt": "Edit @Video1 (confined)", "video": "../elsewhere/clip.mp4"},
        {"id": "loopback", "prompt": "Edit @Video1 (confined)", "video": f"{stack.sim}/_simulator/ledger"},
    ]
    manifest = folder / "batch.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    billed_before = len(httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json())
    params = {
        "manifest": str(manifest),
        "backend": "simulator",
        "report_dir": str(stack.root / "reports-confined"),
        "output_dir": str(stack.root / "outputs-confined"),
        "poll_interval_s": 0.2,
        "poll_max_interval_s": 0.5,
    }
    run_id = _trigger(stack, _deployment(stack, "edit_videos/edit-videos-adhoc")["id"], params)

    state = _wait_finished(stack, [run_id])[run_id]["state"]
    assert (state["type"], state["name"]) == ("COMPLETED", "1/3 succeeded"), f"{state}\n{stack.logs()}"
    report = pd.read_parquet(stack.root / "reports-confined").set_index("job_id")
    assert report["status"].to_dict() == {"inside": "succeeded", "climb": "failed", "loopback": "failed"}
    assert "elsewhere/clip.mp4 is outside the allowed input folders" in report.loc["climb", "error"]
    assert "non-public address 127.0.0.1" in report.loc["loopback", "error"]
    assert len(httpx.get(f"{stack.sim}/_simulator/ledger", timeout=10).json()) == billed_before + 1
