"""Screenshots to check by eye: the HTML report (one run, several runs) and the Prefect UI (a flow run's page,
its UI report artifact, the deployment's custom-run form), all in headless Chromium.

    .venv/bin/python scripts/screenshots.py -o /tmp/klingflow-screens        # HTML + Prefect UI
    .venv/bin/python scripts/screenshots.py -o /tmp/klingflow-screens --html-only

The Prefect part starts its own throwaway server (temp PREFECT_HOME, a free port, telemetry off), deploys
prefect.yaml as the README does (`klingflow setup`, `prefect deploy --all`, a process worker), runs the demo
manifest through the ad-hoc deployment on the simulator, and stops the worker and the server.
Nothing is written to the repository; PNGs go to the output folder (keep it out of git).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.screenshot_report import DEMO_RUNS, demo_history, screenshot  # noqa: E402

DEPLOYMENT = "edit-videos-adhoc"  # from prefect.yaml
POOL = "klingflow-process"
UI_WAIT_MS = 12_000  # the UI is a single-page app: let its API calls finish before the capture


def html_shots(out: Path, work: Path) -> list[Path]:
    """The single-run and the multi-run HTML report of a demo history."""
    from klingflow.report.html import write_html
    from klingflow.report.summary import filter_history
    from klingflow.report.writer import read_history

    history = read_history(demo_history(work))
    one = filter_history(history, run_ids=[DEMO_RUNS[1][0]])
    single = write_html(one, work / "single.html", title=f"klingflow run {DEMO_RUNS[1][1]}")
    multi = write_html(history, work / "multi.html", title="klingflow report: 2 runs")
    return [
        screenshot(single, out / "report-single-run.png", height=2200),
        screenshot(multi, out / "report-multi-run.png", height=2400),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, check, timeout_s: float = 120.0) -> object:
    """Poll `check` until it returns something truthy (or fail naming `what`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except Exception:  # noqa: BLE001, S110 - not up yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A throwaway Prefect server (analytics off) on a free port; yields its UI base URL."""
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait("Prefect server", lambda: httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).is_success)
        os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_URL")})
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextmanager
def deployed_with_a_worker(home: Path) -> Iterator[None]:
    """As the README deploys: `klingflow setup`, `prefect deploy --all` from prefect.yaml, one process worker."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_CLI_PROMPT": "false", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    for argv in (
        [sys.executable, "-m", "klingflow.app.setup", "--no-demo-media"],
        [str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml")],
    ):
        subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    log = (home / "worker.log").open("w")
    worker = [str(bin_dir / "prefect"), "worker", "start", "--pool", POOL, "--install-policy", "never"]
    proc = subprocess.Popen(worker, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _deployment_id() -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_deployment_by_name(f"edit_videos/{DEPLOYMENT}").id)


def run_demo_through_deployment(work: Path) -> str:
    """Run the demo manifest via the deployment (simulator, fast) and return the flow run id."""
    from prefect.deployments import run_deployment

    from klingflow.app.demo import DEMO_DIR, ensure_demo_media

    ensure_demo_media()
    params = {
        "manifest": str(DEMO_DIR / "manifest.csv"),
        "backend": "simulator",
        "run_name": "demo via the deployment",
        "output_dir": str(work / "outputs"),
        "report_dir": str(work / "reports"),
        "state_dir": str(work / "state"),
        "simulator_time_scale": 0.2,
    }
    run = run_deployment(f"edit_videos/{DEPLOYMENT}", parameters={"params": params}, timeout=600)
    if not run.state or not run.state.is_final():
        raise RuntimeError(f"the demo run did not finish: {run.state}")
    return str(run.id)


def _report_artifact_id(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from klingflow.report.artifacts import UI_REPORT_KEY

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[UI_REPORT_KEY])
            )
        )
    return str(found[0].id)


def prefect_shots(out: Path, work: Path) -> list[Path]:
    """The flow run's page, its UI report artifact and the deployment's custom-run form."""
    home = work / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    with prefect_server(home) as ui, deployed_with_a_worker(home):
        deployment_id = _wait("deployment", _deployment_id)
        run_id = run_demo_through_deployment(work)
        artifact_id = _report_artifact_id(run_id)
        pages = {
            "prefect-flow-run.png": (f"{ui}/runs/flow-run/{run_id}", 1200),
            "prefect-ui-report-artifact.png": (f"{ui}/artifacts/artifact/{artifact_id}", 1800),
            "prefect-custom-run-form.png": (f"{ui}/deployments/deployment/{deployment_id}/run", 1800),
        }
        return [
            screenshot(url, out / name, width=1440, height=height, wait_ms=UI_WAIT_MS, offline=False)
            for name, (url, height) in pages.items()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path(tempfile.gettempdir()) / "klingflow-screens")
    parser.add_argument("--html-only", action="store_true", help="skip the Prefect UI screenshots")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="klingflow-screens-"))
    shots = html_shots(args.output, work)
    if not args.html_only:
        shots += prefect_shots(args.output, work)
    for png in shots:
        print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
