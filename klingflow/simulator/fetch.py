"""Getting input files the way the provider would: our own CDN URLs straight from disk (any loopback
port, so URLs cached before a restart still work), data: URIs decoded, anything else over HTTP."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote

import httpx

from klingflow.media.download import DownloadError, stream_to_file
from klingflow.simulator.storage import Storage


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
        await stream_to_file(url, path, client=client, max_bytes=max_bytes)
    except DownloadError as exc:
        if exc.too_large:
            raise _too_large(url, max_bytes) from exc
        raise FetchError(f"Failed to download {url}: {exc}") from exc
    return Fetched(path, temporary=True)
