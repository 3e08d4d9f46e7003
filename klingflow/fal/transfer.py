"""Streaming a URL to a local file: fal's CDN outputs (through the run's pooled client) and remote
inputs (preprocessing, from worker threads that have no event loop).

Stream in chunks, stop at a byte ceiling, fsync, and leave no partial file behind on failure; callers
choose where the file goes and what "done" means (verify, rename). No Authorization header is ever
sent with these requests: output and input URLs are storage hosts, not fal's API.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import httpx

from klingflow.errors import DownloadError

CHUNK = 1 << 20
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=30.0)


async def stream_to_file(client: httpx.AsyncClient, url: str, path: Path, *, max_bytes: int | None = None) -> int:
    """Write the body of `url` to `path` (fsynced) and return its size; on failure remove `path`."""
    size = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                code = response.status_code
                raise DownloadError(f"HTTP {code}", retryable=code == 429 or code >= 500)
            with path.open("wb") as fh:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise DownloadError(f"larger than {max_bytes} bytes", too_large=True)
                    fh.write(chunk)
                fh.flush()
                await asyncio.to_thread(os.fsync, fh.fileno())  # a disk wait: never on the event loop
    except httpx.HTTPError as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{exc.__class__.__name__}: {exc}", retryable=True) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


def download_sync(
    url: str,
    path: Path,
    *,
    timeout_s: float,
    deadline_s: float | None = None,
    max_bytes: int | None = None,
    check: Callable[[str], None] | None = None,
) -> int:
    """`stream_to_file` for a thread without an event loop (preprocessing's worker threads).

    `timeout_s` bounds each network wait; `deadline_s` the whole transfer (a server trickling bytes never
    trips a per-read timeout). `check(url)` runs before every request, each redirect included, and may raise
    to refuse it."""

    async def vet(request: httpx.Request) -> None:
        if check is not None:
            check(str(request.url))  # this loop serves this download alone: a blocking lookup stalls nothing else

    async def fetch() -> int:
        hooks = {"request": [vet]}
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, event_hooks=hooks) as client:
            return await asyncio.wait_for(stream_to_file(client, url, path, max_bytes=max_bytes), deadline_s)

    try:
        return asyncio.run(fetch())
    except TimeoutError as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(f"not complete after {deadline_s:.0f} s", retryable=True) from exc
