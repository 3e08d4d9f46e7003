"""Hashing speed against `sha256sum`, and the peak memory of a real run with one ~200 MB input.

    python -m bench.hashing
    python -m bench.hashing --gib 1 --repeats 3 --clip-bit-rate 156000000

(a) `klingflow.hashing.sha256_file` against the `sha256sum` command on one file of random bytes
(1 GiB by default), warm page cache for both (the file is read once before any timing), timings
interleaved, median of `--repeats` each. The per-version digest cache is cleared before every
klingflow timing, so each one reads and hashes the whole file. Target: klingflow's throughput
at least 0.8 times sha256sum's.

(b) `klingflow run` of a one-row manifest on a standalone simulator (in its own process: fal's work is
not klingflow's memory); the input is a compliant 10 s
1280x720 H.264 clip made by `make_clip` at a constant bit rate (x264 CBR with filler data; a test
pattern is far smaller otherwise), ~193 MB: just under the endpoint's 200 MB cap
(`klingflow.endpoint.MAX_VIDEO_BYTES`, 200 * 10^6 bytes), checked, and planned as a passthrough (no
transcode). The run talks to one Prefect server started before it. Peak RSS is what the kernel reports
for the klingflow process when it is reaped (`os.wait4` ru_maxrss: the process's own high-water mark,
or that of its largest reaped child if larger); VmHWM of the klingflow PID itself, polled every 50 ms,
is printed too. Targets: exit 0, the input passed through, peak RSS ≤ 500 MB. MB is 10^6 bytes
throughout (MB/s too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.prefect_server import prefect_server
from bench.throughput import standalone_simulator
from klingflow import hashing
from klingflow.endpoint import MAX_VIDEO_BYTES
from klingflow.media.plan import PlanOptions, plan_video
from klingflow.media.probe import probe_video
from klingflow.media.synth import make_clip

MB = 1_000_000
HASH_RATIO = 0.8
RUN_RSS_MB = 500.0
CLIP_S = 10.0
CLIP_BIT_RATE = 156_000_000  # ~193 MB in 10 s with filler data
POLL_S = 0.05
RUN_TIMEOUT_S = 1800.0


# --- (a) hashing throughput ---------------------------------------------------------------------


@dataclass
class HashFigures:
    size_bytes: int
    sha256sum_s: list[float] = field(default_factory=list)
    klingflow_s: list[float] = field(default_factory=list)

    def mb_per_s(self, timings: list[float]) -> float:
        return self.size_bytes / MB / statistics.median(timings)

    @property
    def ratio(self) -> float:
        return self.mb_per_s(self.klingflow_s) / self.mb_per_s(self.sha256sum_s)


def write_random_file(path: Path, size: int) -> Path:
    chunk = 16 << 20
    with path.open("wb") as fh:
        for start in range(0, size, chunk):
            fh.write(os.urandom(min(chunk, size - start)))
    return path


def read_once(path: Path) -> None:
    """Pull the file into the page cache, so both hashers read from memory."""
    with path.open("rb") as fh:
        while fh.read(16 << 20):
            pass


def time_sha256sum(path: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout.split()[0]


def time_klingflow(path: Path) -> tuple[float, str]:
    hashing._sha256.cache_clear()  # the digest is remembered per (path, size, mtime): force a full read
    started = time.perf_counter()
    digest = hashing.sha256_file(path)
    return time.perf_counter() - started, digest


def measure_hashing(path: Path, repeats: int) -> HashFigures:
    figures = HashFigures(size_bytes=path.stat().st_size)
    for _ in range(repeats):
        ours, ours_hex = time_sha256sum(path)
        theirs, theirs_hex = time_klingflow(path)
        if ours_hex != theirs_hex:
            raise SystemExit(f"digests differ: sha256sum {ours_hex}, klingflow {theirs_hex}")
        figures.sha256sum_s.append(ours)
        figures.klingflow_s.append(theirs)
        print(f"  sha256sum {ours:.2f} s, sha256_file {theirs:.2f} s", flush=True)
    return figures


# --- running klingflow with its peak RSS (shared with bench.dry_run) ----------------------------


@dataclass
class RunResult:
    exit_code: int
    wall_s: float
    maxrss_bytes: int  # os.wait4's ru_maxrss of the klingflow process
    own_hwm_bytes: int  # last polled VmHWM of the klingflow PID itself
    log: Path

    @property
    def peak_mb(self) -> float:
        return self.maxrss_bytes / MB

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def klingflow_env(root: Path, api_url: str) -> dict[str, str]:
    """The run's environment: its own homes, the shared Prefect server, quiet logs, no outside simulator."""
    env = {k: v for k, v in os.environ.items() if k not in ("KLINGFLOW_SIMULATOR_URL", "PREFECT_API_URL")}
    return env | {
        "KLINGFLOW_HOME": str(root / "home"),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def klingflow_command(manifest: Path, root: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "klingflow.app.cli", "run", str(manifest), "--backend", "simulator"]
    command += ["--state-dir", str(root / "state"), "--out", str(root / "out"), "--report-dir", str(root / "reports")]
    return [*command, *extra]


def vm_hwm_bytes(pid: int) -> int | None:
    """VmHWM of a live process, or None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in text.splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None


def poll_hwm(pid: int, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        if (hwm := vm_hwm_bytes(pid)) is not None:
            seen[0] = max(seen[0], hwm)
        stop.wait(POLL_S)


def run_measured(command: list[str], env: dict[str, str], log: Path, timeout_s: float = RUN_TIMEOUT_S) -> RunResult:
    """Run `command` to its end (stdout and stderr to `log`); its exit code, wall time and peak RSS."""
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop, seen = threading.Event(), [0]
        poller = threading.Thread(target=poll_hwm, args=(proc.pid, stop, seen), daemon=True)
        poller.start()
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            stop.set()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        poller.join()
    return RunResult(proc.returncode, wall, usage.ru_maxrss * 1024, seen[0], log)


# --- (b) a real run with one ~200 MB input -------------------------------------------------------


def make_big_clip(path: Path, bit_rate: int) -> Path:
    """A compliant 10 s 720p clip of ~bit_rate/8*10 bytes (CBR with filler NALs keeps x264 at the rate)."""
    kbps = bit_rate // 1000
    params = f"nal-hrd=cbr:vbv-maxrate={kbps}:vbv-bufsize={kbps}:filler=1"
    options = {"preset": "ultrafast", "x264-params": params}
    return make_clip(path, seconds=CLIP_S, width=1280, height=720, bit_rate=bit_rate, options=options)


def check_passthrough(path: Path) -> int:
    """The clip's size; SystemExit unless it is within the endpoint's limits as it is (no transcode)."""
    probe = probe_video(path)
    if probe.size_bytes > MAX_VIDEO_BYTES:
        raise SystemExit(f"clip is {probe.size_bytes} bytes > {MAX_VIDEO_BYTES}: lower --clip-bit-rate")
    plan = plan_video(probe, PlanOptions(keep_audio=True))
    if plan.mode != "passthrough":
        raise SystemExit(f"clip would be preprocessed ({plan.actions}), not passed through")
    return probe.size_bytes


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def latest_run(report_dir: Path) -> pd.DataFrame:
    report = pd.read_parquet(report_dir)
    return report[report["run_started_at"] == report["run_started_at"].max()]


def measure_big_run(root: Path, api_url: str, bit_rate: int) -> tuple[int, RunResult, list[str]]:
    """(input bytes, the run, each row's status and preprocess actions)."""
    # encoded in a child process: a bench grown by the encode would hand its size to the forked klingflow,
    # whose wait4 peak then reads as the bench's (measured: 509 MB against the klingflow process's own 370)
    clip = root / "big.mp4"
    code = "from pathlib import Path; from bench.hashing import make_big_clip; "
    code += f"make_big_clip(Path({str(clip)!r}), {bit_rate})"
    subprocess.run([sys.executable, "-c", code], check=True)
    size = check_passthrough(clip)
    row = {"id": "job0", "prompt": "Edit of @Video1", "video": str(clip)}
    manifest = write_manifest(root / "manifest.jsonl", [row])
    with standalone_simulator(root, concurrency=2) as url:  # fal's work is not klingflow's memory
        env = klingflow_env(root, api_url) | {"KLINGFLOW_SIMULATOR_URL": url}
        result = run_measured(klingflow_command(manifest, root), env, root / "run.log")
    if result.exit_code != 0:
        print(result.tail())
    try:
        rows = latest_run(root / "reports")
        outcome = [f"{s} {list(a)}" for s, a in zip(rows["status"], rows["preprocess_actions"], strict=True)]
    except (OSError, ValueError, KeyError) as exc:
        outcome = [f"no report ({exc.__class__.__name__}: {exc})"]
    return size, result, outcome


# --- verdict -------------------------------------------------------------------------------------


def print_checks(checks: dict[str, bool]) -> int:
    for text, ok in checks.items():
        print(f"  {'ok  ' if ok else 'MISS'} {text}")
    return 0 if all(checks.values()) else 1


def verdict(figures: HashFigures | None, size: int, run: RunResult | None, outcome: list[str]) -> int:
    checks: dict[str, bool] = {}
    if figures is not None:
        theirs, ours = figures.mb_per_s(figures.sha256sum_s), figures.mb_per_s(figures.klingflow_s)
        print(
            f"\nhash of {figures.size_bytes / MB:.0f} MB (warm cache), median of {len(figures.klingflow_s)}: "
            f"sha256sum {theirs:.0f} MB/s, klingflow.hashing.sha256_file {ours:.0f} MB/s"
        )
        checks[f"sha256_file / sha256sum throughput {figures.ratio:.2f} (target >= {HASH_RATIO})"] = (
            figures.ratio >= HASH_RATIO
        )
    if run is not None:
        print(
            f"\nklingflow run, one {size / MB:.1f} MB input (limit {MAX_VIDEO_BYTES / MB:.0f} MB): exit "
            f"{run.exit_code} in {run.wall_s:.1f} s; peak RSS {run.peak_mb:.0f} MB (wait4), VmHWM of the "
            f"klingflow PID {run.own_hwm_bytes / MB:.0f} MB; rows: {outcome}"
        )
        checks[f"run exit {run.exit_code} (target 0)"] = run.exit_code == 0
        checks[f"input passed through untouched: {outcome}"] = outcome == ["succeeded ['passthrough']"]
        checks[f"peak RSS {run.peak_mb:.0f} MB (target <= {RUN_RSS_MB:.0f})"] = run.peak_mb <= RUN_RSS_MB
    return print_checks(checks)


def with_tmp(prefix: str, body: Callable[[Path], int]) -> int:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        return body(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the hashed file, GiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip-bit-rate", type=int, default=CLIP_BIT_RATE, help="bits/s of the 10 s input")
    parser.add_argument("--skip-hash", action="store_true", help="only the run")
    parser.add_argument("--skip-run", action="store_true", help="only the hash timings")
    args = parser.parse_args(argv)

    def body(root: Path) -> int:
        figures = run = None
        size, outcome = 0, []
        if not args.skip_hash:
            path = write_random_file(root / "blob.bin", int(args.gib * (1 << 30)))
            read_once(path)
            print(f"hashing {path.stat().st_size} bytes, {args.repeats} interleaved timings each", flush=True)
            figures = measure_hashing(path, args.repeats)
            path.unlink()
        if not args.skip_run:
            print("klingflow run with one ~200 MB input", flush=True)
            with prefect_server(root / "prefect-server") as api_url:
                size, run, outcome = measure_big_run(root, api_url, args.clip_bit_rate)
        return verdict(figures, size, run, outcome)

    return with_tmp("kf-bench-hashing-", body)


if __name__ == "__main__":
    sys.exit(main())
