"""Storage protocol: CDN token, single-part, multipart and fallback uploads, downloads."""

from __future__ import annotations

import os
from pathlib import Path

import fal_client
import httpx

from klingflow.hashing import sha256_file
from klingflow.simulator import Simulator


def _download(url: str, dst: Path) -> httpx.Response:
    with httpx.stream("GET", url) as response, dst.open("wb") as f:
        for chunk in response.iter_bytes():
            f.write(chunk)
    return response


def test_small_upload_roundtrips_byte_identical(sim: Simulator, client: fal_client.SyncClient, media, tmp_path: Path):
    """upload_file returns a loopback URL serving the same bytes with the uploaded content type."""
    url = client.upload_file(media.clip)
    assert url.startswith(sim.url + "/files/") and url.endswith("/clip.mp4")
    response = _download(url, tmp_path / "back.mp4")
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == media.clip.stat().st_size
    assert sha256_file(tmp_path / "back.mp4") == sha256_file(media.clip)
    counters = sim.counters()
    assert counters["uploads"] == 1 and counters["upload_bytes"] == media.clip.stat().st_size
    assert counters["calls"]["token"] == 1


def test_head_reports_length_without_body(sim: Simulator, client: fal_client.SyncClient, media):
    """HEAD on a file URL gives its Content-Length and type."""
    url = client.upload_file(media.image)
    response = httpx.head(url)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == media.image.stat().st_size
    assert response.headers["content-type"] == "image/png"


def test_multipart_upload_over_100mib_is_byte_identical(sim: Simulator, client: fal_client.SyncClient, tmp_path: Path):
    """A >100 MiB file goes through create/parts/complete and downloads identical."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(101):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(12345))
    url = client.upload_file(big)
    assert url.endswith("/big.bin")
    _download(url, tmp_path / "big.back")
    assert sha256_file(tmp_path / "big.back") == sha256_file(big)
    assert sim.counters()["upload_bytes"] == big.stat().st_size
    assert sim.counters()["calls"]["upload"] == 1 + 11 + 1  # create, 11 parts, complete


async def test_async_upload_and_fallback_repository(sim: Simulator, aclient: fal_client.AsyncClient, media):
    """Async v3 upload works, and the "fal" repository (signed PUT URL) stores the same bytes."""
    v3_url = await aclient.upload_file(media.image)
    fal_url = await aclient.upload(media.image.read_bytes(), "image/png", "ref.png", repository="fal")
    assert v3_url != fal_url
    assert httpx.get(fal_url).content == httpx.get(v3_url).content == media.image.read_bytes()


def test_cdn_upload_needs_the_issued_token(sim: Simulator):
    """Uploads with a raw key or a forged bearer token are rejected with 401."""
    for header in ("Key some-key", "Bearer forged.123.abc"):
        response = httpx.post(f"{sim.url}/files/upload", content=b"x", headers={"Authorization": header})
        assert response.status_code == 401


def test_token_route_returns_aware_expiry(sim: Simulator):
    """The CDN token carries token_type, base_url and an ISO expiry with an offset."""
    response = httpx.post(
        f"{sim.url}/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers={"Authorization": "Key k"}
    )
    body = response.json()
    assert body["token_type"] == "Bearer" and body["base_url"] == sim.url
    assert body["expires_at"].endswith("+00:00")


def test_unknown_file_is_404(sim: Simulator):
    """A file URL that was never uploaded is 404."""
    assert httpx.get(f"{sim.url}/files/AAAAAAAAAAAAAAAA/nothing.mp4").status_code == 404
