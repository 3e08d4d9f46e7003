"""Streaming a URL to a local file: the one downloader the pipeline and the simulator share.

Outputs (collect), remote inputs (preprocess) and the simulator's fetch of remote inputs all need
the same thing: stream in chunks, stop at a byte ceiling, flush to disk, and leave no partial file
behind on failure. Callers choose where the file goes and what "done" means (verify, rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from klingflow.errors import KlingflowError

CHUNK = 1 << 20
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=30.0)


class DownloadError(KlingflowError):
    """A URL could not be downloaded; `too_large` when it passed the byte ceiling."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


async def stream_to_file(
    url: str, path: Path, *, client: httpx.AsyncClient | None = None, max_bytes: int | None = None
) -> int:
    """Write the body of `url` to `path` (fsynced) and return its size; on failure remove `path`."""
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, follow_redirects=True) as own:
                return await _stream(own, url, path, max_bytes)
        return await _stream(client, url, path, max_bytes)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def _stream(client: httpx.AsyncClient, url: str, path: Path, max_bytes: int | None) -> int:
    size = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code}")
            with path.open("wb") as fh:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise DownloadError(f"larger than {max_bytes} bytes", too_large=True)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
    except httpx.HTTPError as exc:
        raise DownloadError(f"{exc.__class__.__name__}: {exc}") from exc
    return size
