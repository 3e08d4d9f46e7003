"""A paid output, downloaded and verified: temp file → decodes, lasts as long as the input → fsync → rename.

A half-written output never looks complete, and the file always lands inside the run's output dir
(its name is made of the job id, which the manifest checked, and the request id, both sanitised).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from klingflow.endpoint import billable_seconds
from klingflow.errors import MediaError
from klingflow.fal.api import FalApi
from klingflow.hashing import sha256_file
from klingflow.media.probe import probe_video
from klingflow.models import JobRecord

DURATION_TOLERANCE_S = 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_path(output_dir: str | Path, job_id: str, request_id: str) -> Path:
    """Where a job's output goes: an absolute path inside `output_dir`, whatever the ids contain."""
    root = Path(output_dir).expanduser().resolve()
    name = f"{_UNSAFE.sub('_', job_id).lstrip('.') or 'job'}-{_UNSAFE.sub('_', request_id)}.mp4"
    path = (root / name).resolve()
    if path.parent != root:
        raise MediaError(f"output name {name!r} escapes {root}")
    return path


async def download_and_verify(record: JobRecord, fal: FalApi, output_dir: str | Path) -> JobRecord:
    """The record with its verified output file (status succeeded), or failed at the download stage."""
    if record.output_url is None or record.request_id is None:
        return record
    try:
        final = output_path(output_dir, record.job_id, record.request_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.part")
        try:
            size = await fal.download(record.output_url, tmp)
            probe = await asyncio.to_thread(probe_video, tmp)
            _check_duration(record, probe.duration_s)
            digest = await asyncio.to_thread(sha256_file, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    except (MediaError, OSError) as exc:
        return record.fail("download", str(exc), path=record.output_url)
    return record.with_(
        status="succeeded",
        output_path=str(final),
        output_sha256=digest,
        output_bytes=size,
        output_duration_s=probe.duration_s,
        error=None,
        error_stage=None,
    )


def _check_duration(record: JobRecord, duration_s: float) -> None:
    expected = record.input_duration_s
    if expected is not None and abs(duration_s - expected) > DURATION_TOLERANCE_S:
        raise MediaError(f"output lasts {duration_s:.2f} s but the input lasts {expected:.2f} s")
    if billable_seconds(duration_s) == 0:
        raise MediaError("output has no duration")


async def materialised(record: JobRecord, output_dir: str | Path) -> JobRecord:
    """A reused output, also in this run's output dir (hard-linked, else copied): a run with `--out other`
    leaves every output it reports in `other`. Nothing is paid; if the copy fails, the row keeps pointing
    at the intact original."""
    if not record.output_path or record.request_id is None:
        return record
    source = Path(record.output_path)
    try:
        target = output_path(output_dir, record.job_id, record.request_id)
        if target == source.resolve() or (target.is_file() and target.samefile(source)):
            return record.with_(output_path=str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem, or links not allowed
                await asyncio.to_thread(shutil.copyfile, source, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except (MediaError, OSError):
        return record
    return record.with_(output_path=str(target))


async def output_is_intact(path: str | None, sha256: str | None) -> bool:
    """Whether a recorded output file is still there with the recorded bytes."""
    if not path or not Path(path).is_file():
        return False
    return await asyncio.to_thread(sha256_file, path) == sha256
