"""Upload stage: every file a job needs, to fal storage, each distinct content once.

A content-hash cache (diskcache, JSON values, private directory) maps the SHA-256 of the bytes to
the URL fal gave for them. A cached URL is reused while it is still served (one HEAD request per
URL per process), so re-runs upload 0 bytes; identical files within a run share one upload.
Cross-process races can upload the same bytes twice (bandwidth only, never a paid request).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from klingflow.cachedir import open_json_cache
from klingflow.errors import JobError
from klingflow.fal.backend import BackendSession
from klingflow.hashing import sha256_file
from klingflow.models import JobRecord


class UploadCache:
    """sha256 → URL, per backend namespace, with in-process de-duplication of concurrent uploads."""

    def __init__(self, directory: str | Path, session: BackendSession) -> None:
        self._cache = open_json_cache(directory)
        self._session = session
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._verified: set[str] = set()

    def _key(self, digest: str) -> str:
        return f"{self._session.namespace}|{digest}"

    async def url_for(self, path: str, digest: str | None = None) -> tuple[str, bool, int]:
        """(url, cache_hit, bytes_uploaded) for a local file."""
        digest = digest or await asyncio.to_thread(sha256_file, path)
        if digest in self._inflight:
            return await self._inflight[digest], True, 0
        cached = self._cache.get(self._key(digest))
        if cached and await self._still_served(cached["url"]):
            return cached["url"], True, 0
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            url = await self._session.client.upload_file(Path(path))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiting jobs re-raise it themselves
            raise
        finally:
            self._inflight.pop(digest, None)
        size = Path(path).stat().st_size
        self._cache.set(self._key(digest), {"url": url, "bytes": size, "uploaded_at": time.time()})
        self._verified.add(url)
        future.set_result(url)
        return url, False, size

    async def _still_served(self, url: str) -> bool:
        if url in self._verified:
            return True
        try:
            async with httpx.AsyncClient(timeout=15, follow_redirects=True) as http:
                response = await http.head(url)
        except httpx.HTTPError:
            return False
        ok = response.status_code < 400 or response.status_code == 405  # 405: HEAD not allowed, URL exists
        if ok:
            self._verified.add(url)
        return ok

    def close(self) -> None:
        self._cache.close()


async def upload_job(record: JobRecord, cache: UploadCache) -> JobRecord:
    """Upload the job's video, images and element images; fill in their URLs."""
    if not record.ok or record.input_path is None:
        return record
    hits = uploaded = 0

    async def one(path: str, digest: str | None = None) -> str:
        nonlocal hits, uploaded
        try:
            url, hit, size = await cache.url_for(path, digest)
        except Exception as exc:
            where = f"{record.row} ({record.job_id})"
            raise JobError(f"upload failed: {_describe(exc)}", job_id=where, path=path) from exc
        hits += hit
        uploaded += size
        return url

    try:
        video_url = await one(record.input_path, record.input_sha256)
        image_urls = [await one(p) for p in record.prepared_images]
        element_urls: list[dict[str, Any]] = []
        for element in record.prepared_elements:
            element_urls.append(
                {
                    "frontal_image_url": await one(element.frontal),
                    "reference_image_urls": [await one(r) for r in element.references],
                }
            )
    except JobError as exc:
        return record.fail("upload", exc.message)
    return record.model_copy(
        update={
            "video_url": video_url,
            "image_urls": image_urls,
            "element_urls": element_urls,
            "upload_cache_hits": hits,
            "uploaded_bytes": uploaded,
        }
    )


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


@task(name="upload", cache_policy=NO_CACHE)
async def upload(record: JobRecord, cache: UploadCache) -> JobRecord:
    """Prefect task: upload one job's files (fal_client retries transient upload errors itself)."""
    result = await upload_job(record, cache)
    if result.ok:
        get_run_logger().info(
            "%s: %d file(s), %d cache hit(s), %d bytes uploaded",
            record.job_id,
            1 + len(result.image_urls) + len(result.element_urls),
            result.upload_cache_hits,
            result.uploaded_bytes,
        )
    return result
