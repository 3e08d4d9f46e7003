"""The script a user writes instead of klingflow: asyncio + fal_client + a semaphore.

    python -m bench.bare_script --simulator-url URL --video clip.mp4 --jobs 200 --concurrency 20 --out DIR

Uploads the clip once, submits every edit under the semaphore, polls each request to its end,
fetches the result and downloads the output. Prints one JSON line of timings (monotonic seconds
from the start of `main`) for bench/throughput.py to compare with klingflow's run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import fal_client
import httpx

from klingflow.endpoint import ENDPOINT_ID
from klingflow.fal.urls import fal_client_pointed_at

BARE_KEY = "bench-bare-script"  # its own key: the simulator counts its requests in flight apart from klingflow's


async def edit_all(video: Path, jobs: int, concurrency: int, out: Path, poll_s: float) -> dict:
    started_at, start = time.time(), time.monotonic()
    client = fal_client.AsyncClient(key=BARE_KEY)
    gate = asyncio.Semaphore(concurrency)
    submits: list[float] = []
    out.mkdir(parents=True, exist_ok=True)
    video_url = await client.upload_file(str(video))
    async with httpx.AsyncClient(timeout=120) as http:

        async def one(i: int) -> None:
            async with gate:
                prompt = f"Bare edit {i} ({out.name}, {started_at}) of @Video1"
                handle = await client.submit(ENDPOINT_ID, arguments={"prompt": prompt, "video_url": video_url})
                submits.append(time.monotonic() - start)
                while not isinstance(await handle.status(), fal_client.Completed):
                    await asyncio.sleep(poll_s)
                result = await handle.get()
            response = await http.get(result["video"]["url"])
            response.raise_for_status()
            (out / f"bare-{i}.mp4").write_bytes(response.content)

        await asyncio.gather(*(one(i) for i in range(jobs)))
    return {
        "started_at": started_at,
        "first_submit_s": min(submits),
        "makespan_s": time.monotonic() - start,
        "submits": len(submits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator-url", required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--poll", type=float, default=0.25)
    args = parser.parse_args()
    with fal_client_pointed_at(args.simulator_url):
        timings = asyncio.run(edit_all(args.video, args.jobs, args.concurrency, args.out, args.poll))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
