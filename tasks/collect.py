"""Collect stage: wait for a request to finish, fetch its result, download and verify the output.

Polling is adaptive: fal_client polls every 0.1 s (~600 status calls per job-minute); here the
interval starts at `poll_interval_s` and grows by half each poll up to `poll_max_interval_s`, so a
multi-minute Kling job costs about 2-3 status calls a minute. New log lines are forwarded to the
Prefect run log. Past the per-job timeout the request is cancelled at fal.

`wait_for_result` (the slot-holding part) and `download_output` are separate tasks: the
concurrency slot is released as soon as fal is done with the request, and a retried download
never touches the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fal_client
import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from klingflow.endpoint import EditOutput, billable_seconds, cost_usd
from klingflow.errors import MediaError
from klingflow.fal.backend import BackendSession
from klingflow.hashing import sha256_file
from klingflow.media.download import DownloadError, stream_to_file
from klingflow.media.probe import probe_video
from klingflow.models import JobRecord

GROWTH = 1.5
UNREACHABLE_STAGE = "collect-unreachable"  # error_stage when fal could not be asked: the request may still finish
RESULT_TIMEOUT = httpx.Timeout(120.0, connect=30.0)
DURATION_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class PollSettings:
    interval_s: float
    max_interval_s: float
    timeout_s: float


def next_interval(current: float, settings: PollSettings) -> float:
    """The adaptive polling schedule: geometric growth, capped."""
    return min(settings.max_interval_s, current * GROWTH)


async def wait_for_result(
    record: JobRecord, session: BackendSession, endpoint: str, settings: PollSettings, log: Any
) -> JobRecord:
    """Poll until the request completes (or times out and is cancelled), then fetch its result."""
    if not record.ok or record.request_id is None:
        return record
    handle = await session.client.get_handle(endpoint, record.request_id)
    submitted = record.submitted_at or datetime.now(UTC)
    deadline = time.monotonic() + max(0.0, settings.timeout_s - (datetime.now(UTC) - submitted).total_seconds())
    interval, polls, logs_seen, started_at, last_position = settings.interval_s, record.status_polls, 0, None, None
    while True:
        status = await handle.status(with_logs=True)
        polls += 1
        if isinstance(status, fal_client.Queued) and status.position != last_position:
            last_position = status.position
            log.info("%s: in queue at position %s", record.job_id, status.position)
        if isinstance(status, fal_client.InProgress | fal_client.Completed):
            started_at = started_at or datetime.now(UTC)
            for line in (status.logs or [])[logs_seen:]:
                log.info("%s: [fal] %s", record.job_id, line.get("message", line))
            logs_seen = max(logs_seen, len(status.logs or []))
        if isinstance(status, fal_client.Completed):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return await _cancel_after_timeout(record, handle, settings, polls, log)
        await asyncio.sleep(min(interval, remaining))
        interval = next_interval(interval, settings)
    completed_at = datetime.now(UTC)
    inference = (status.metrics or {}).get("inference_time")
    if isinstance(inference, int | float):
        started_at = completed_at - timedelta(seconds=float(inference))
    update = {"status_polls": polls, "started_at": started_at, "completed_at": completed_at}
    return await _fetch_result(record.model_copy(update=update), session, handle.response_url)


async def _cancel_after_timeout(
    record: JobRecord, handle: fal_client.AsyncRequestHandle, settings: PollSettings, polls: int, log: Any
) -> JobRecord:
    log.warning(
        "%s: no result after %.0f s; cancelling request %s", record.job_id, settings.timeout_s, handle.request_id
    )
    with contextlib.suppress(fal_client.FalClientError, httpx.HTTPError):
        await handle.cancel()
    return record.model_copy(
        update={
            "status": "cancelled",
            "error_stage": "collect",
            "error": f"row {record.row} ({record.job_id}): timed out after {settings.timeout_s:.0f} s; "
            f"request {record.request_id} cancelled",
            "status_polls": polls,
            "completed_at": datetime.now(UTC),
        }
    )


async def _fetch_result(record: JobRecord, session: BackendSession, response_url: str) -> JobRecord:
    """GET the result with its headers (fal_client drops them): `x-fal-billable-units` is the bill."""
    headers = {"Authorization": f"Key {session.key}"}
    try:
        async with httpx.AsyncClient(timeout=RESULT_TIMEOUT, headers=headers) as http:
            response = await http.get(response_url)
    except httpx.HTTPError as exc:
        return record.fail(UNREACHABLE_STAGE, f"row {record.row} ({record.job_id}): result fetch failed: {exc!r}")
    if response.status_code >= 400:
        return record.fail("collect", f"row {record.row} ({record.job_id}): {_error_text(response)}")
    try:
        output = EditOutput.model_validate(response.json())
    except ValueError as exc:
        return record.fail("collect", f"row {record.row} ({record.job_id}): unexpected result ({exc})")
    billed, source = _billed(response, record)
    return record.model_copy(
        update={
            "output_url": output.video.url,
            "billed_seconds": billed,
            "cost_usd": float(cost_usd(billed)) if billed is not None else None,
            "cost_source": source,
        }
    )


def _billed(response: httpx.Response, record: JobRecord) -> tuple[float | None, str]:
    units = response.headers.get("x-fal-billable-units")
    if units is not None:
        with contextlib.suppress(ValueError):
            return float(units), "header"
    if record.estimated_seconds is not None:
        return float(record.estimated_seconds), "estimate"
    return None, "none"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return f"HTTP {response.status_code}: {detail}"


async def download_and_verify(record: JobRecord, output_dir: Path) -> JobRecord:
    """Download the output atomically (temp file, verify, rename) and check it decodes and its duration."""
    if not record.ok or record.output_url is None:
        return record
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{record.job_id}-{record.request_id}.mp4"
    tmp = output_dir / f".{final.name}.part"
    try:
        size = await stream_to_file(record.output_url, tmp)
        probe = await asyncio.to_thread(probe_video, tmp)
        _check_duration(record, probe.duration_s)
        digest = await asyncio.to_thread(sha256_file, tmp)
        os.replace(tmp, final)
    except (DownloadError, OSError, MediaError) as exc:
        tmp.unlink(missing_ok=True)
        where = f"row {record.row} ({record.job_id}), output {record.output_url}"
        return record.fail("download", f"{where}: {exc}")
    return record.model_copy(
        update={
            "status": "succeeded",
            "output_path": str(final),
            "output_sha256": digest,
            "output_bytes": size,
            "output_duration_s": probe.duration_s,
        }
    )


def _check_duration(record: JobRecord, duration_s: float) -> None:
    expected = record.input_duration_s
    if expected is not None and abs(duration_s - expected) > DURATION_TOLERANCE_S:
        raise MediaError(f"output lasts {duration_s:.2f} s but the input lasts {expected:.2f} s")
    if billable_seconds(duration_s) == 0:
        raise MediaError("output has no duration")


@task(name="collect", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 20, 60])
async def collect(record: JobRecord, session: BackendSession, endpoint: str, settings: PollSettings) -> JobRecord:
    """Prefect task: wait for one request and fetch its result. Retries only re-poll (never resubmit)."""
    return await wait_for_result(record, session, endpoint, settings, get_run_logger())


@task(name="download", cache_policy=NO_CACHE)
async def download(record: JobRecord, output_dir: str) -> JobRecord:
    """Prefect task: download and verify one output.

    A failure is the job's error, not an exception to retry: the paid result stays `completed` in the
    request ledger and the next run downloads it again without paying.
    """
    result = await download_and_verify(record, Path(output_dir))
    logger = get_run_logger()
    if result.status == "succeeded":
        logger.info(
            "%s: %s (%.2f s, $%.2f)",
            record.job_id,
            result.output_path,
            result.output_duration_s or 0,
            result.cost_usd or 0,
        )
    elif result.error:
        logger.error("%s", result.error)
    return result
