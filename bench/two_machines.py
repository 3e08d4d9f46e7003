"""Two laptops on one fal key: two `klingflow run`s of one manifest with separate state dirs and report dirs and
no shared database, the second started 0..N s after the first; how many jobs fal bills twice, and whether
`klingflow reconcile` (run on each report dir) names every one by job key.

    python -m bench.two_machines --trials 10 --jobs 20 --max-offset 8
    python -m bench.two_machines --trials 10 --jobs 20 --max-offset 0      # row 6: both started together
    python -m bench.two_machines --trials 5 --max-offset 0 --primed        # the key was shared before
    python -m bench.two_machines --trials 3 --max-offset 0 --history-lag 30 --bound 20   # fal lists late

One simulator in this process (fal's semantics: history lists a request once it started, `--history-lag` s
later; 2 requests of the key run at once), a fresh one per trial; one Prefect server for every run, each run
with its own concurrency limit (2 requests in flight, as on its own laptop). Per trial it prints the jobs
billed twice, the residual window (for each job billed twice: the time between the two submits), whether
each run warned that no shared ledger is configured, and what reconcile named. Exits 1 when a trial bills
more than `--bound` jobs twice, a run fails, or reconcile misses a duplicate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.prefect_server import prefect_server
from klingflow.fal.submit import TAG_JOB
from klingflow.media.synth import make_clip
from klingflow.simulator import Simulator, SimulatorConfig

HISTORY_LAG_S = 1.0
TIME_SCALE = 0.5  # 1.5 s of processing per 3 s clip: a 20-job run lasts ~20 s at 2 in flight
WARNING = "No shared request ledger is configured"
BOUND = 4  # jobs billed twice allowed per trial (the documented residual; see the README)


@dataclass
class Trial:
    offset_s: float
    jobs: int
    exits: tuple[int, int] = (0, 0)
    duplicates: list[str] = field(default_factory=list)  # job key prefixes billed more than once
    windows_s: list[float] = field(default_factory=list)  # per duplicate: time between its two submits
    warned: tuple[bool, bool] = (False, False)
    warned_before_first_submit: tuple[bool, bool] = (False, False)
    named: tuple[set[str], set[str]] = (set(), set())  # job key prefixes reconcile named, per report dir
    reconcile_exits: tuple[int, int] = (0, 0)
    adopted: tuple[int, int] = (0, 0)
    logs: tuple[str, str] = ("", "")

    @property
    def missed(self) -> set[str]:
        """Duplicates a reconcile did not name (either report dir)."""
        return {d for d in self.duplicates if not all(d in named for named in self.named)}


def manifest(root: Path, jobs: int, tag: str) -> Path:
    """`jobs` edits of one 3 s clip, their prompts marked with `tag` (so no other manifest's request matches)."""
    clip = root / "clip.mp4"
    if not clip.exists():
        make_clip(clip, seconds=3, width=720, height=720)
    path = root / f"manifest-{tag}.jsonl"
    rows = [{"id": f"job{i:02d}", "prompt": f"Edit {i} of @Video1 ({tag})", "video": str(clip)} for i in range(jobs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def command(manifest_path: Path, home: Path, label: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "klingflow.app.cli",
        "run",
        str(manifest_path),
        "--backend",
        "simulator",
        "--concurrency",
        "2",
        "--state-dir",
        str(home / "state"),
        "--out",
        str(home / "outputs"),
        "--report-dir",
        str(home / "reports"),
        "--poll-interval",
        "0.1",
        "--poll-max-interval",
        "0.3",
        "--concurrency-limit",
        f"klingflow-two-machines-{label}-{home.parent.name}-{home.name}",  # each laptop its own slots
    ]


def reconcile(home: Path, env: dict[str, str]) -> tuple[int, set[str]]:
    """`klingflow reconcile` on one machine's report dir: its exit status and the job keys it named twice."""
    cmd = [sys.executable, "-m", "klingflow.app.cli", "reconcile", str(home / "reports"), "--format", "json"]
    done = subprocess.run([*cmd, "--state-dir", str(home / "state")], env=env, capture_output=True, text=True)
    try:
        body = json.loads(done.stdout)
    except ValueError:
        print(done.stdout[-2000:], done.stderr[-2000:])
        return done.returncode, set()
    return done.returncode, {d["job_key"] for d in body.get("duplicates", [])}


def machine_env(sim: Simulator, home: Path, api_url: str) -> dict[str, str]:
    """One laptop's environment: its own KLINGFLOW_HOME and Prefect home, the shared simulator (one fal key)."""
    env = {
        **os.environ,
        "KLINGFLOW_SIMULATOR_URL": sim.url,
        "KLINGFLOW_HOME": str(home / "home"),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("KLINGFLOW_DATABASE_URL", None)  # two laptops: no shared database
    return env


def run_alone(sim: Simulator, home: Path, manifest_path: Path, api_url: str, label: str) -> int:
    """One `klingflow run` on one laptop, to the end; its exit status (its log in `home/<label>.log`)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / f"{label}.log").open("w") as log:
        cmd = command(manifest_path, home, label)
        return subprocess.run(cmd, env=machine_env(sim, home, api_url), stdout=log, stderr=subprocess.STDOUT).returncode


def two_runs(
    sim: Simulator,
    homes: tuple[Path, Path],
    manifest_path: Path,
    api_url: str,
    *,
    offset_s: float = 0.0,
    after_submits: int = 0,
    label: str = "run",
) -> Trial:
    """Laptop A starts; laptop B once the simulator accepted `after_submits` more submits, `offset_s` later; both
    run to the end. What the simulator billed twice (by job tag) and what each laptop's log and reconcile say."""
    jobs = len(manifest_path.read_text().splitlines())
    result = Trial(offset_s=offset_s, jobs=jobs)
    billed_before = {e.request_id for e in sim.ledger()}
    submits = sim.counters()["submits"]
    procs = []
    for i, home in enumerate(homes):
        if i:
            while sim.counters()["submits"] < submits + after_submits and procs[0].poll() is None:
                time.sleep(0.01)
            time.sleep(offset_s)
        home.mkdir(parents=True, exist_ok=True)
        log = (home / f"{label}.log").open("w")
        cmd = command(manifest_path, home, f"{label}-{'ab'[i]}")
        procs.append(
            subprocess.Popen(cmd, env=machine_env(sim, home, api_url), stdout=log, stderr=subprocess.STDOUT, text=True)
        )
    exits = tuple(p.wait(timeout=600) for p in procs)
    result.exits = (exits[0], exits[1])
    by_job: dict[str, list] = defaultdict(list)
    for entry in sim.ledger():
        if entry.request_id not in billed_before:
            by_job[entry.tags.get(TAG_JOB, entry.request_id)].append(entry)
    for key, entries in sorted(by_job.items()):
        if len(entries) > 1:
            result.duplicates.append(key)
            sent = sorted(e.submitted_at for e in entries)
            result.windows_s.append((sent[-1] - sent[0]).total_seconds())
    logs = tuple((home / f"{label}.log").read_text() for home in homes)
    result.logs = (logs[0], logs[1])
    result.warned = (WARNING in logs[0], WARNING in logs[1])
    first = "seen before this run's first submit"
    result.warned_before_first_submit = (first in logs[0], first in logs[1])
    result.adopted = (logs[0].count("adopting it instead"), logs[1].count("adopting it instead"))
    named = [reconcile(home, machine_env(sim, home, api_url)) for home in homes]
    result.reconcile_exits = (named[0][0], named[1][0])
    result.named = (named[0][1], named[1][1])
    return result


def trial(
    root: Path, jobs: int, offset_s: float, api_url: str, history_lag_s: float = HISTORY_LAG_S, *, primed: bool = False
) -> Trial:
    """One trial on a fresh key (a fresh simulator): laptop A starts, laptop B `offset_s` later. `primed`: each
    laptop first ran a one-job manifest of its own on the key (the key was shared before: each sees requests its
    ledger does not know before its first submit)."""
    root.mkdir(parents=True, exist_ok=True)
    path = manifest(root, jobs, root.name)
    config = SimulatorConfig(
        state_dir=root / "sim",
        time_scale=TIME_SCALE,
        concurrency_per_key=2,
        log_interval_s=0.5,
        history_lag_s=history_lag_s,
    )
    homes = (root / "machine-a", root / "machine-b")
    with Simulator(config) as sim:
        for home in homes if primed else ():
            run_alone(sim, home, manifest(root, 1, f"{root.name}-{home.name}"), api_url, "earlier")
        return two_runs(sim, homes, path, api_url, offset_s=offset_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--max-offset", type=float, default=8.0, help="second run starts 0..this many s later")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--history-lag", type=float, default=HISTORY_LAG_S)
    parser.add_argument("--bound", type=int, default=BOUND, help="jobs billed twice allowed per trial")
    parser.add_argument("--primed", action="store_true", help="each laptop used the key once before the trial")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory() as tmp, prefect_server(Path(tmp) / "prefect-server") as api_url:
        for n in range(args.trials):
            offset = rng.uniform(0.0, args.max_offset)
            t = trial(Path(tmp) / f"trial-{n}", args.jobs, offset, api_url, args.history_lag, primed=args.primed)
            trials.append(t)
            windows = ", ".join(f"{w:.2f}" for w in t.windows_s) or "-"
            print(
                f"trial {n + 1}: B +{offset:.2f} s: {len(t.duplicates)}/{t.jobs} billed twice "
                f"(windows s: {windows}); adopted A {t.adopted[0]} B {t.adopted[1]}; warned A {t.warned[0]} "
                f"B {t.warned[1]} (before first submit A {t.warned_before_first_submit[0]} "
                f"B {t.warned_before_first_submit[1]}); exits {t.exits}; reconcile exits {t.reconcile_exits}, "
                f"missed {sorted(t.missed) or 'none'}",
                flush=True,
            )
    counts = [len(t.duplicates) for t in trials]
    windows = [w for t in trials for w in t.windows_s]
    print(
        f"billed twice per trial: {counts}; median {statistics.median(counts)}/{args.jobs}, max {max(counts)}; "
        f"residual window (s between the two submits of a job billed twice): "
        + (f"median {statistics.median(windows):.2f}, max {max(windows):.2f}" if windows else "none")
    )
    bad = [
        t
        for t in trials
        if len(t.duplicates) > args.bound
        or t.missed
        or any(e not in (0,) for e in t.exits)
        or (t.duplicates and 0 in t.reconcile_exits)
    ]
    print("OK" if not bad else f"FAILED: {len(bad)} trial(s) over the bound, with a failed run or a missed duplicate")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
