"""Benchmark the fal simulator: standalone startup time and 200-job fast-copy throughput.

    .venv/bin/python bench/bench_simulator.py [--starts 7] [--jobs 200] [--concurrency 50]

Startup = spawning `python -m klingflow.simulator` until it prints its URL and answers /_simulator/health.
Throughput = the real async fal_client submitting N jobs at once and awaiting every result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fal_client
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from klingflow.endpoint import ENDPOINT_ID  # noqa: E402
from klingflow.fal.urls import point_fal_client_at  # noqa: E402
from klingflow.media.synth import make_clip  # noqa: E402
from klingflow.simulator import Simulator, SimulatorConfig  # noqa: E402


def startup_seconds(state_dir: Path) -> float:
    """Wall time from spawn to a healthy server, for one standalone start."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    cmd = [sys.executable, "-m", "klingflow.simulator", "--port", "0", "--state-dir", str(state_dir)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        httpx.get(f"{url}/_simulator/health").raise_for_status()
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


async def throughput(work: Path, jobs: int, concurrency: int) -> tuple[float, int]:
    """Seconds to run `jobs` fast-copy jobs through the async fal_client, and the ledger size."""
    config = SimulatorConfig(state_dir=work / "load", fast_copy=True, time_scale=0.0, concurrency_per_key=concurrency)
    with Simulator(config) as sim:
        point_fal_client_at(sim.url)
        client = fal_client.AsyncClient(key="bench-key")
        url = await client.upload_file(make_clip(work / "clip.mp4", seconds=3, width=720, height=720))
        started = time.perf_counter()

        async def one(i: int) -> dict:
            handle = await client.submit(ENDPOINT_ID, {"prompt": f"job {i}", "video_url": url})
            return await handle.get()

        await asyncio.gather(*(one(i) for i in range(jobs)))
        return time.perf_counter() - started, len(sim.ledger())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        starts = [startup_seconds(work / f"start-{i}") for i in range(args.starts)]
        print(f"startup: median {statistics.median(starts):.3f} s over {len(starts)} starts "
              f"(min {min(starts):.3f}, max {max(starts):.3f})")  # fmt: skip
        elapsed, billed = asyncio.run(throughput(work, args.jobs, args.concurrency))
        print(f"throughput: {args.jobs} fast-copy jobs in {elapsed:.2f} s = {args.jobs / elapsed:.1f} jobs/s "
              f"(concurrency_per_key={args.concurrency}, ledger entries={billed})")  # fmt: skip


if __name__ == "__main__":
    main()
