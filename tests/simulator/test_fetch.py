"""Input fetching: byte ceilings and download errors become the provider's 422 error kinds."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from klingflow.simulator.fetch import FetchError, fetch
from klingflow.simulator.storage import Storage


def _client(status: int = 200, body: bytes = b"x" * 100) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(status, content=body)))


async def test_remote_file_within_limit_is_a_temporary_copy(tmp_path: Path):
    """A remote file up to max_bytes is downloaded to tmp/ and removed by discard()."""
    storage = Storage(tmp_path)
    async with _client() as client:
        fetched = await fetch("https://example.com/a.png", storage=storage, client=client, max_bytes=100)
    assert fetched.path.read_bytes() == b"x" * 100
    fetched.discard()
    assert list(storage.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "max_bytes", "kind", "message"),
    [
        (200, 99, "file_too_large", "is larger than 99 bytes"),
        (404, 1000, "file_download_error", "Failed to download https://example.com/a.png: HTTP 404"),
    ],
)
async def test_remote_failures_map_to_kinds(tmp_path: Path, status: int, max_bytes: int, kind: str, message: str):
    """Too big and non-200 downloads are FetchErrors of the right kind, leaving no partial file."""
    storage = Storage(tmp_path)
    async with _client(status) as client:
        with pytest.raises(FetchError, match=message) as err:
            await fetch("https://example.com/a.png", storage=storage, client=client, max_bytes=max_bytes)
    assert err.value.kind == kind
    assert list(storage.tmp_dir.iterdir()) == []


async def test_local_and_data_uri_inputs_obey_the_limit(tmp_path: Path):
    """Our own stored files and data: URIs are held to the same byte ceiling as downloads."""
    storage = Storage(tmp_path)
    slot, name = storage.new_slot("ref.png", "image/png")
    storage.path(slot, name).write_bytes(b"y" * 50)
    local_url = Storage.url("http://127.0.0.1:1", slot, name)
    data_url = "data:image/png;base64," + base64.b64encode(b"z" * 50).decode()
    async with _client() as client:
        for url in (local_url, data_url):
            assert (await fetch(url, storage=storage, client=client, max_bytes=50)).path.stat().st_size == 50
            with pytest.raises(FetchError) as err:
                await fetch(url, storage=storage, client=client, max_bytes=49)
            assert err.value.kind == "file_too_large"


class _BrokenStream(httpx.AsyncByteStream):
    """A body that breaks after its first chunk, like a connection reset mid-download."""

    async def __aiter__(self):
        yield b"x" * 10
        raise httpx.ReadError("connection reset")


async def test_broken_download_leaves_no_partial_file(tmp_path: Path):
    """A transport error mid-body is a file_download_error and the partial file is removed."""
    storage = Storage(tmp_path)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_BrokenStream()))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(FetchError, match="ReadError") as err:
            await fetch("https://example.com/a.mp4", storage=storage, client=client, max_bytes=1000)
    assert err.value.kind == "file_download_error"
    assert list(storage.tmp_dir.iterdir()) == []
