"""Uploads with a content-hash cache: every distinct content goes to fal storage once.

A diskcache (JSON values, private directory) maps the SHA-256 of the bytes to the URL fal gave for
them. A cached URL is reused while it is still served (one HEAD per URL per run), so re-runs upload 0
bytes; identical files within a run share one upload (and its retries: a failing upload is repeated
with backoff by FalQueue before the jobs sharing it fail). Cross-process races can upload the same
bytes twice (bandwidth only, never a paid request). Opened and closed by the run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType

from klingflow.cachedir import open_json_cache
from klingflow.errors import FalError
from klingflow.fal.api import FalApi
from klingflow.hashing import sha256_file
from klingflow.models import JobRecord, Stage


class UploadCache:
    """sha256 → URL, per backend namespace, with in-process de-duplication of concurrent uploads."""

    def __init__(self, directory: str | Path, fal: FalApi) -> None:
        self._cache = open_json_cache(directory)
        self._fal = fal
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._verified: set[str] = set()

    def __enter__(self) -> UploadCache:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _key(self, digest: str) -> str:
        return f"{self._fal.namespace}|{digest}"

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
            url = await self._fal.upload(path)
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
        ok = await self._fal.is_served(url)
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
        url, hit, size = await cache.url_for(path, digest)
        hits += hit
        uploaded += size
        return url

    current = record.input_path
    try:
        video_url = await one(current, record.input_sha256)
        image_urls = []
        for current in record.prepared_images:
            image_urls.append(await one(current))
        element_urls = []
        for element in record.prepared_elements:
            current = element.frontal
            frontal = await one(current)
            references = []
            for current in element.references:
                references.append(await one(current))
            element_urls.append({"frontal_image_url": frontal, "reference_image_urls": references})
    except (FalError, OSError) as exc:
        return record.fail(Stage.upload, f"upload failed: {exc}", path=current)
    return record.with_(
        video_url=video_url,
        image_urls=image_urls,
        element_urls=element_urls,
        upload_cache_hits=hits,
        uploaded_bytes=uploaded,
    )
