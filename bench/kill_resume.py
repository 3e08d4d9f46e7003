"""Kill the pipeline with SIGKILL at random moments, re-run it each time, then prove from the
simulator's billing ledger that every job was billed exactly once and every output verifies.

    python -m bench.kill_resume --kills 20 --jobs 6 --seed 7

The simulator runs in this process (it survives the kills); each pipeline run is a `klingflow run`
subprocess sharing one state dir (upload cache, request ledger) and one report dir. Odd-numbered
kills are random in time; even-numbered ones (while jobs remain unsubmitted) wait for the
simulator to accept a new submission and kill within 0-30 ms of it — aiming at the window between
fal accepting a request and the pipeline recording its id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.prefect_server import prefect_server
from klingflow.ledger.schema import DATABASE_URL_ENV
from klingflow.ledger.store import RequestLedger
from klingflow.media.probe import probe_video
from klingflow.media.synth import make_clip
from klingflow.simulator import Simulator, SimulatorConfig

HISTORY_LAG_S = 1.0
# A lost submit is resent only after the history has not listed it for this long: longer than any request
# waits in the simulator's queue here (16 jobs x 3 s / 2 at a time), as 15 minutes is for normal fal queueing.
SETTLE_WINDOW_S = 60.0


@dataclass
class KillReport:
    kills: int
    submits_at_kill: list[int] = field(default_factory=list)
    final_exit: int | None = None
    jobs: int = 0
    billed_per_job: dict[str, int] = field(default_factory=dict)
    outputs_verified: int = 0
    final_elapsed_s: float = 0.0
    ledger_entries: int = 0  # entries the final request ledger holds (in its database)

    @property
    def billed_exactly_once(self) -> bool:
        return len(self.billed_per_job) == self.jobs and set(self.billed_per_job.values()) == {1}


def _manifest(root: Path, jobs: int) -> Path:
    clip = make_clip(root / "clip.mp4", seconds=3, width=1280, height=720)
    path = root / "manifest.jsonl"
    rows = [{"id": f"job{i}", "prompt": f"Edit number {i} of @Video1", "video": str(clip)} for i in range(jobs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _command(manifest: Path, root: Path, iteration: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "klingflow.app.cli",
        "run",
        str(manifest),
        "--backend",
        "simulator",
        "--concurrency",
        "2",
        "--state-dir",
        str(root / "state"),
        "--out",
        str(root / "outputs"),
        "--report-dir",
        str(root / "reports"),
        "--poll-interval",
        "0.1",
        "--poll-max-interval",
        "0.3",
        "--concurrency-limit",
        f"klingflow-kill-{iteration}",  # a killed holder leaks its slot until expiry
        "--settle-window",
        str(SETTLE_WINDOW_S),
    ]


def _wait_random(proc: subprocess.Popen[bytes], delay_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay_s)


def _wait_for_submit(proc: subprocess.Popen[bytes], sim: Simulator, timeout_s: float, after_s: float) -> None:
    """Return `after_s` after the simulator accepted one more submission (or at timeout / exit)."""
    before = sim.counters()["submits"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if sim.counters()["submits"] > before:
            time.sleep(after_s)
            return
        time.sleep(0.002)


def run(
    kills: int,
    jobs: int,
    seed: int,
    max_delay_s: float,
    root: Path,
    log=print,
    history_lag_s: float = HISTORY_LAG_S,
    api_url: str | None = None,
    database_url: str | None = None,
) -> KillReport:
    """The kill loop; every run talks to the Prefect server at `api_url` (the kills land in the pipeline, not
    in a temporary server's start-up) and keeps its request ledger at `database_url` (None: SQLite in the
    state dir)."""
    rng = random.Random(seed)
    manifest = _manifest(root, jobs)
    report = KillReport(kills=kills, jobs=jobs)
    # 1 s of processing per video second: a 12-job run outlives most kills, so kills land mid-flight
    # fal's history lists a request only once it started, `history_lag_s` later (as fal documents it)
    config = SimulatorConfig(
        state_dir=root / "sim", time_scale=1.0, concurrency_per_key=2, log_interval_s=0.5, history_lag_s=history_lag_s
    )
    with Simulator(config) as sim:
        env = {
            **os.environ,
            "KLINGFLOW_SIMULATOR_URL": sim.url,
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **({"PREFECT_API_URL": api_url} if api_url else {}),
            **({DATABASE_URL_ENV: database_url} if database_url else {}),
        }
        for i in range(kills):
            proc = subprocess.Popen(
                _command(manifest, root, i),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started = time.monotonic()
            if i % 2 == 0 or sim.counters()["submits"] >= jobs:  # nothing left to submit: random kills only
                _wait_random(proc, rng.uniform(0.5, max_delay_s))
            else:
                _wait_for_submit(proc, sim, max_delay_s * 1.5, rng.uniform(0.0, 0.03))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            submits = sim.counters()["submits"]
            report.submits_at_kill.append(submits)
            log(
                f"kill {i + 1}/{kills} after {time.monotonic() - started:.2f} s: {submits} submit(s) so far, "
                f"{len(sim.ledger())} billed"
            )
        started = time.monotonic()
        final = subprocess.run(_command(manifest, root, kills), env=env, capture_output=True, text=True, check=False)
        report.final_elapsed_s = time.monotonic() - started
        report.final_exit = final.returncode
        if final.returncode != 0:
            log(final.stdout[-4000:] + final.stderr[-4000:])
        report.billed_per_job = dict(Counter(e.input["prompt"] for e in sim.ledger()))
    with RequestLedger(root / "state" / "requests", "simulator", url=database_url) as ledger:
        report.ledger_entries = len(ledger.entries())
    history = pd.read_parquet(root / "reports")
    last = history[history["run_started_at"] == history["run_started_at"].max()]
    for path, expected in zip(last["output_path"], last["input_duration_s"], strict=True):
        if isinstance(path, str) and Path(path).is_file() and abs(probe_video(path).duration_s - expected) < 0.5:
            report.outputs_verified += 1
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-delay", type=float, default=14.0, help="latest kill, seconds after start")
    parser.add_argument("--history-lag", type=float, default=HISTORY_LAG_S, help="simulator history lag, seconds")
    parser.add_argument("--database-url", default=os.environ.get(DATABASE_URL_ENV), help="request ledger database")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, prefect_server(Path(tmp) / "prefect-server") as api_url:
        result = run(
            args.kills,
            args.jobs,
            args.seed,
            args.max_delay,
            Path(tmp),
            history_lag_s=args.history_lag,
            api_url=api_url,
            database_url=args.database_url,
        )
    print(
        f"final run exit {result.final_exit} in {result.final_elapsed_s:.1f} s; billed per job: "
        f"{result.billed_per_job}; outputs verified {result.outputs_verified}/{result.jobs}"
    )
    ok = result.final_exit == 0 and result.billed_exactly_once and result.outputs_verified == result.jobs
    print("every job billed exactly once and every output verifies" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
