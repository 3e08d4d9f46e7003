"""The UI of klingflow's local Prefect server, as a user opens it: it reaches its API and shows a finished run.

One local server for the module, on a random port (as `klingflow run` starts it); the browser test needs
headless Chromium (skipped without it outside CI, required with KLINGFLOW_REQUIRE_CHROMIUM=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from klingflow.app.local_prefect import LocalServer
from klingflow.media.synth import make_clip
from klingflow.simulator import FaultConfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UI_WAIT_MS = 20_000  # the UI is a single-page app: virtual time for its API calls before the DOM is dumped


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A KLINGFLOW_HOME whose local Prefect server is stopped at the end."""
    root = tmp_path_factory.mktemp("local-prefect-ui") / "home"
    yield root
    LocalServer(root / "prefect-server").stop()


@pytest.fixture(scope="module")
def api_url(home: Path) -> str:
    """The local server's API URL (started here, as the first `klingflow run` starts it)."""
    return LocalServer(home / "prefect-server").ensure()


def _chromium() -> str:
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chromium = module.find_chromium()
    if chromium is None:
        if os.environ.get("CI") and os.environ.get("KLINGFLOW_REQUIRE_CHROMIUM") == "1":
            pytest.fail("Chromium is required (CI and KLINGFLOW_REQUIRE_CHROMIUM=1) but none was found")
        pytest.skip("no Chromium (apt-get install -y chromium, or set KLINGFLOW_CHROMIUM) - the UI is not checked")
    return chromium


def _dump_dom(chromium: str, url: str) -> str:
    """The page's DOM after the single-page app has had UI_WAIT_MS of virtual time to load its data."""
    with tempfile.TemporaryDirectory(prefix="klingflow-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
        cmd += [f"--user-data-dir={profile}", "--window-size=1600,1200", f"--virtual-time-budget={UI_WAIT_MS}"]
        cmd += ["--dump-dom", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout, f"Chromium dumped nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def test_the_ui_is_told_the_servers_own_api_url(api_url: str) -> None:
    """`/ui-settings` gives the UI the API of this server (its random port), not Prefect's default 4200."""
    settings = httpx.get(f"{api_url.removesuffix('/api')}/ui-settings", timeout=10, trust_env=False).json()
    assert settings["api_url"] == api_url


def test_a_finished_run_page_shows_its_name_and_how_many_jobs_succeeded(
    home: Path, api_url: str, tmp_path: Path, make_simulator
) -> None:
    """A `klingflow run` where 1 of 3 jobs fails (exit 1): its page in the local UI names the run and says
    "2/3 succeeded", with no "Can't connect"."""
    chromium = _chromium()
    make_simulator(faults=FaultConfig(fail_prompts_containing=["FAIL"]))
    clip = make_clip(tmp_path / "clip.mp4", seconds=3, width=1280, height=720)
    manifest = tmp_path / "batch.jsonl"
    prompts = ["Edit one @Video1", "Edit two @Video1", "FAIL this edit @Video1"]
    rows = [{"id": f"j{i}", "prompt": p, "video": str(clip)} for i, p in enumerate(prompts)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"KLINGFLOW_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect-client")}
    cmd = [sys.executable, "-m", "klingflow.app.cli", "run", str(manifest), "--backend", "simulator"]
    cmd += ["--name", "ui-check-batch", "--out", str(tmp_path / "out"), "--report-dir", str(tmp_path / "reports")]
    cmd += ["--poll-interval", "0.1", "--poll-max-interval", "0.3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    runs = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=10, trust_env=False).json()
    run = next(r for r in runs if r["name"] == "ui-check-batch")
    dom = _dump_dom(chromium, f"{api_url.removesuffix('/api')}/runs/flow-run/{run['id']}")
    assert "Can't connect" not in dom and "Can&#39;t connect" not in dom, dom[-3000:]
    assert "ui-check-batch" in dom
    assert "2/3 succeeded" in dom, dom[-3000:]  # the state's name, in the page's header
