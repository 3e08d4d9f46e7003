"""Upload stage: each distinct content uploaded once, cached URLs reused while they are served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from klingflow.cachedir import open_json_cache
from klingflow.fal.queue import FalQueue
from klingflow.fal.uploads import UploadCache, upload_job
from klingflow.hashing import sha256_file
from klingflow.media.synth import make_clip, make_image
from klingflow.models import ElementSpec, JobRecord


@pytest.fixture
def job(tmp_path: Path) -> JobRecord:
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    img = make_image(tmp_path / "i.png")
    return JobRecord(
        job_id="j",
        row=1,
        prompt="p",
        video=str(clip),
        input_path=str(clip),
        prepared_images=[str(img)],
        prepared_elements=[ElementSpec(frontal=str(img), references=[str(img)])],
    )


async def test_same_bytes_upload_once_per_run_and_never_on_the_next(
    tmp_path: Path, simulator, fal: FalQueue, job: JobRecord
) -> None:
    """One image used three times uploads once; a new cache on the same dir uploads 0 bytes."""
    cache = UploadCache(tmp_path / "uploads", fal)
    first = await upload_job(job, cache)
    cache.close()
    assert simulator.counters()["uploads"] == 2  # the clip and the image
    assert first.upload_cache_hits == 2
    assert first.image_urls == [first.element_urls[0]["frontal_image_url"]]
    assert first.uploaded_bytes == Path(job.input_path).stat().st_size + Path(job.prepared_images[0]).stat().st_size

    again = UploadCache(tmp_path / "uploads", fal)
    second = await upload_job(job, again)
    again.close()
    assert simulator.counters()["uploads"] == 2
    assert (second.uploaded_bytes, second.upload_cache_hits) == (0, 4)
    assert second.video_url == first.video_url


async def test_concurrent_jobs_share_one_upload(tmp_path: Path, simulator, fal: FalQueue, job: JobRecord) -> None:
    """Five jobs with the same video at once: one upload, five identical URLs."""
    cache = UploadCache(tmp_path / "uploads", fal)
    bare = job.model_copy(update={"prepared_images": [], "prepared_elements": []})
    results = await asyncio.gather(*(upload_job(bare, cache) for _ in range(5)))
    cache.close()
    assert simulator.counters()["uploads"] == 1
    assert len({r.video_url for r in results}) == 1


async def test_a_url_no_longer_served_is_uploaded_again(tmp_path: Path, fal: FalQueue, job: JobRecord) -> None:
    """A cached URL that fails its HEAD check (expired, or another simulator) is replaced by a new upload."""
    bare = job.model_copy(update={"prepared_images": [], "prepared_elements": []})
    cache = UploadCache(tmp_path / "uploads", fal)
    first = await upload_job(bare, cache)
    cache.close()
    key = f"{fal.namespace}|{sha256_file(job.input_path)}"
    with open_json_cache(tmp_path / "uploads") as raw:
        raw[key] = {**raw[key], "url": first.video_url.replace("/files/", "/files/gone-")}
    fresh = UploadCache(tmp_path / "uploads", fal)
    second = await upload_job(bare, fresh)
    fresh.close()
    assert second.uploaded_bytes > 0
    assert second.video_url != first.video_url.replace("/files/", "/files/gone-")


async def test_upload_failure_is_the_jobs_error(tmp_path: Path, fal: FalQueue, job: JobRecord) -> None:
    """A file that vanished before upload fails that job, naming the row and the file."""
    missing = job.model_copy(
        update={"input_path": str(tmp_path / "gone.mp4"), "prepared_images": [], "prepared_elements": []}
    )
    cache = UploadCache(tmp_path / "uploads", fal)
    failed = await upload_job(missing, cache)
    cache.close()
    assert failed.status == "failed"
    assert failed.error_stage == "upload"
    assert "gone.mp4" in failed.error and "row 1 (j)" in failed.error


async def test_a_failing_upload_is_retried_before_the_jobs_sharing_it_fail(
    tmp_path: Path, simulator, fal: FalQueue, job: JobRecord
) -> None:
    """Two 500s on the one upload ten jobs share: it is repeated, and all ten get the same URL."""
    from klingflow.simulator import FaultConfig, RouteFaults

    simulator.set_faults(FaultConfig(upload=RouteFaults(http_500=1.0, max_count=2)))
    bare = job.with_(prepared_images=[], prepared_elements=[])
    with UploadCache(tmp_path / "uploads", fal) as cache:
        results = await asyncio.gather(*(upload_job(bare, cache) for _ in range(10)))
    assert [r.status for r in results] == ["pending"] * 10
    assert len({r.video_url for r in results}) == 1
    assert simulator.counters()["faults"]["upload.http_500"] == 2
    assert simulator.counters()["uploads"] == 1
