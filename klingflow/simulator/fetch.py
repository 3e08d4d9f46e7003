"""Getting input files the way the provider would: our own CDN URLs straight from disk (any loopback
port, so URLs cached before a restart still work), data: URIs decoded, anything else over HTTP.

The HTTP download is the simulator's own (it imports nothing of klingflow's pipeline layers): a
streamed GET into tmp/ under a byte ceiling, the partial file removed on any failure."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from urllib.parse import unquote

import httpx

from klingflow.simulator.storage import Storage

CHUNK = 1024 * 1024


class FetchError(Exception):
    """An input URL cannot be fetched; `kind` is the 422 error type."""

    def __init__(self, message: str, kind: str = "file_download_error") -> None:
        super().__init__(message)
        self.kind = kind


class Fetched:
    """A fetched file; `temporary` files are deleted by `discard`."""

    def __init__(self, path: Path, *, temporary: bool) -> None:
        self.path = path
        self.temporary = temporary

    def discard(self) -> None:
        """Delete the file if it is our temporary copy."""
        if self.temporary:
            self.path.unlink(missing_ok=True)


async def fetch(url: str, *, storage: Storage, client: httpx.AsyncClient, max_bytes: int) -> Fetched:
    """Make `url` available as a local file of at most max_bytes (else FetchError "file_too_large")."""
    local = storage.resolve_url(url)
    if local is not None:
        if local.stat().st_size > max_bytes:
            raise _too_large(url, max_bytes)
        return Fetched(local, temporary=False)
    if url.startswith("data:"):
        return _from_data_uri(url, storage, max_bytes)
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"Unsupported URL: {url[:80]}")
    return await _download(url, storage, client, max_bytes)


def _too_large(what: str, max_bytes: int) -> FetchError:
    return FetchError(f"File at {what} is larger than {max_bytes} bytes", "file_too_large")


def _from_data_uri(url: str, storage: Storage, max_bytes: int) -> Fetched:
    header, _, data = url.partition(",")
    try:
        raw = base64.b64decode(data) if header.endswith(";base64") else unquote(data).encode()
    except (binascii.Error, ValueError) as exc:
        raise FetchError(f"Invalid data URI: {exc}") from exc
    if len(raw) > max_bytes:
        raise _too_large(f"{header[:60]},...", max_bytes)
    path = storage.temp_path()
    path.write_bytes(raw)
    return Fetched(path, temporary=True)


async def _download(url: str, storage: Storage, client: httpx.AsyncClient, max_bytes: int) -> Fetched:
    path = storage.temp_path()
    try:
        await _stream_to_file(client, url, path, max_bytes)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Fetched(path, temporary=True)


async def _stream_to_file(client: httpx.AsyncClient, url: str, path: Path, max_bytes: int) -> int:
    """Write the body of `url` to `path` (fsynced) and return its size; raises FetchError."""
    size = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise FetchError(f"Failed to download {url}: HTTP {response.status_code}")
            with path.open("wb") as fh:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(url, max_bytes)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
    except httpx.HTTPError as exc:
        raise FetchError(f"Failed to download {url}: {exc.__class__.__name__}: {exc}") from exc
    return size
