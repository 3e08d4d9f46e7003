"""Makespan of N one-second requests through a 2-slot Prefect global concurrency limit:
one acquire/release per request (Prefect's `concurrency()` per job) versus klingflow's RequestSlots
(leases handed from job to job, one Prefect client, serialized slot calls).

    python bench/bench_slots.py --jobs 12 --slots 2 --repeat 3

Prints medians and ratios to the ideal makespan (jobs / slots seconds), measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from prefect import flow
from prefect.concurrency.asyncio import concurrency

from klingflow.fal.slots import RequestSlots, ensure_global_limit


async def _per_job(name: str, slots: int, jobs: int, work_s: float) -> float:
    gate = asyncio.Semaphore(slots)

    async def one() -> None:
        async with gate, concurrency(name, occupy=1, strict=True):
            await asyncio.sleep(work_s)

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(jobs)))
    return time.monotonic() - start


async def _lanes(name: str, slots: int, jobs: int, work_s: float) -> float:
    start = time.monotonic()
    async with RequestSlots(name, slots) as pool:

        async def one() -> None:
            async with pool.hold():
                await asyncio.sleep(work_s)

        await asyncio.gather(*(one() for _ in range(jobs)))
        return time.monotonic() - start


@flow(name="bench-slots")
async def bench(jobs: int, slots: int, repeat: int, work_s: float) -> None:
    ideal = jobs / slots * work_s
    results: dict[str, list[float]] = {"per-job acquire": [], "request slots": []}
    for i in range(repeat):
        for label, fn in (("per-job acquire", _per_job), ("request slots", _lanes)):
            name = f"bench-{label.replace(' ', '-')}-{i}-{time.time_ns()}"
            await ensure_global_limit(name, slots)
            results[label].append(await fn(name, slots, jobs, work_s))
    print(f"{jobs} jobs of {work_s:.1f} s through {slots} slots; ideal makespan {ideal:.2f} s; {repeat} repeats")
    for label, times in results.items():
        median = statistics.median(times)
        print(f"  {label:16s} median {median:6.2f} s  ratio to ideal {median / ideal:5.2f}")
    ratio = statistics.median(results["per-job acquire"]) / statistics.median(results["request slots"])
    print(f"  request slots are {ratio:.2f}x faster than per-job acquire")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(bench(args.jobs, args.slots, args.repeat, args.work))


if __name__ == "__main__":
    main()
