"""klingflow's local Prefect server, as users meet it: no PREFECT_API_URL, real `klingflow run` processes.

One server for the module (its first start is part of the first test: four runs start it together).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klingflow.app.local_prefect import LEASE_REAP_EVERY_S, LocalServer
from klingflow.fal.slots import LEASE_S
from klingflow.media.synth import make_clip
from klingflow.simulator import FaultConfig

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A KLINGFLOW_HOME whose local Prefect server is stopped at the end."""
    root = tmp_path_factory.mktemp("local-prefect") / "home"
    yield root
    LocalServer(root / "prefect-server").stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("lp-clip") / "clip.mp4", seconds=3, width=1280, height=720)


def _env(home: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {
        "KLINGFLOW_HOME": str(home),
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def _run_cmd(tmp_path: Path, name: str, clip: Path, prompts: list[str], *options: str) -> list[str]:
    manifest = tmp_path / f"{name}.jsonl"
    rows = [{"id": f"{name}-{i}", "prompt": p, "video": str(clip)} for i, p in enumerate(prompts)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "klingflow.app.cli", "run", str(manifest), "--backend", "simulator"]
    cmd += ["--out", str(tmp_path / f"out-{name}"), "--report-dir", str(tmp_path / "reports")]
    return [*cmd, "--poll-interval", "0.1", "--poll-max-interval", "0.3", *options]


def _start(cmd: list[str], env: dict[str, str], stdout: int = subprocess.PIPE, **options: Any) -> subprocess.Popen[str]:
    """A `klingflow run` process, its output (stdout and stderr together) readable as text."""
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True, **options)


def test_four_runs_started_together_share_one_server_and_all_complete(
    home: Path, tmp_path: Path, make_simulator, clip: Path
) -> None:
    """Four `klingflow run`s at once on a fresh machine: one local server is started, every run exits 0."""
    sim = make_simulator(concurrency_per_key=8)
    env = _env(home, tmp_path)
    procs = [
        _start(_run_cmd(tmp_path, f"r{n}", clip, [f"Run {n} edit {i} @Video1" for i in range(3)]), env)
        for n in range(4)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n\n".join(o[-2000:] for o in outputs)
    assert len(sim.ledger()) == 12
    info = LocalServer(home / "prefect-server").info()
    assert info is not None and LocalServer(home / "prefect-server").running_url() == info["url"]
    assert all("Traceback" not in o for o in outputs)


def test_a_run_killed_with_sigkill_frees_its_slot_for_the_next_run_within_a_lease(
    home: Path, tmp_path: Path, make_simulator, clip: Path
) -> None:
    """kill -9 while holding the only slot of a limit; the next run on that limit waits (and says so), then
    submits within a lease plus the server's reaping loop, and completes."""
    sim = make_simulator(faults=FaultConfig(hang_prompts_containing=["HANG"]))
    env = _env(home, tmp_path)
    limit = ["--concurrency", "1", "--concurrency-limit", f"kill-{tmp_path.name}"]
    first = _start(
        _run_cmd(tmp_path, "hang", clip, ["HANG forever @Video1"], *limit),
        env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while sim.counters()["submits"] < 1:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    started = time.monotonic()
    second = _start(_run_cmd(tmp_path, "next", clip, ["Next edit @Video1"], *limit), env)
    while sim.counters()["submits"] < 2 and second.poll() is None:
        time.sleep(0.1)
    waited = time.monotonic() - started
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 0, output[-3000:]
    assert waited <= LEASE_S + LEASE_REAP_EVERY_S + 25, waited
    assert "waiting" in output and "for a slot of global concurrency limit" in output, output[-3000:]


def test_a_prefect_server_that_cannot_start_is_one_line_and_exit_2(tmp_path: Path, make_simulator, clip: Path) -> None:
    """The local server dies at start (its database cannot be opened): exit 2, one clear line, no traceback."""
    make_simulator()
    env = _env(tmp_path / "home", tmp_path) | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////proc/no-such-dir/prefect.db"
    }
    done = subprocess.run(
        _run_cmd(tmp_path, "nostart", clip, ["Edit @Video1"]), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("klingflow:")]
    assert len(lines) == 1 and "local Prefect server exited at start" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
