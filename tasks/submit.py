"""Submit stage: one POST to fal's queue per job, never blindly resent.

fal_client's `submit` retries a POST whose response was lost (timeouts, dropped connections, some
5xx), and fal has no idempotency key, so a request fal accepted could be sent — and paid — twice.
This stage therefore sends the submit itself, with fal_client's URL configuration and fal's wire
format, and retries only when the request provably did not reach the queue (connection refused,
429). Any other failure leaves the outcome unknown: the job fails saying so, and is not resent.
Status, cancel and upload stay with fal_client (reads and cancels are safe to retry).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from klingflow import __version__
from klingflow.endpoint import EditInput, ElementInput
from klingflow.fal.backend import BackendSession
from klingflow.models import JobRecord

SUBMIT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
MAX_SAFE_RETRIES = 8
UNKNOWN_OUTCOME_STAGE = "submit-unknown"  # error_stage of a job whose POST may or may not have been accepted


class SubmitOutcomeUnknown(Exception):
    """The POST may or may not have been accepted (and billed); resending could pay twice."""


class SubmitRejected(Exception):
    """fal answered and did not accept the request (4xx other than 429)."""


@dataclass(frozen=True)
class Submission:
    """An accepted request. Its status/result/cancel URLs are rebuilt from the id by fal_client's handle."""

    request_id: str
    submitted_at: datetime


def edit_arguments(record: JobRecord) -> dict[str, Any]:
    """The endpoint's input for a job, validated against the endpoint's schema."""
    payload = EditInput(
        prompt=record.prompt,
        video_url=record.video_url or "",
        image_urls=record.image_urls,
        keep_audio=record.keep_audio,
        elements=[ElementInput.model_validate(e) for e in record.element_urls],
        shot_type=record.shot_type,
    )
    return payload.model_dump(exclude_defaults=False)


def _retry_delay(attempt: int, response: httpx.Response | None) -> float:
    if response is not None and (after := response.headers.get("retry-after")):
        try:
            return min(60.0, float(after))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto


async def post_once(
    session: BackendSession, endpoint: str, arguments: dict[str, Any], *, max_retries: int = MAX_SAFE_RETRIES
) -> Submission:
    """POST the request to the queue, retrying only failures that prove it was not accepted."""
    url = f"{session.base_url}/{endpoint}"
    headers = {"Authorization": f"Key {session.key}", "User-Agent": f"klingflow/{__version__}"}
    async with httpx.AsyncClient(timeout=SUBMIT_TIMEOUT, headers=headers) as http:
        for attempt in range(max_retries + 1):
            response = None
            try:
                response = await http.post(url, json=arguments)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the queue: safe to resend
                if attempt == max_retries:
                    raise SubmitRejected(f"cannot connect to {session.label}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise SubmitOutcomeUnknown(f"{exc.__class__.__name__} after the request was sent") from exc
            else:
                if response.status_code != 429:
                    return _accepted(response)
                if attempt == max_retries:
                    raise SubmitRejected("rate limited (HTTP 429) on every attempt")
            await asyncio.sleep(_retry_delay(attempt, response))
    raise AssertionError("unreachable")


def _accepted(response: httpx.Response) -> Submission:
    if response.status_code >= 500:
        raise SubmitOutcomeUnknown(f"HTTP {response.status_code} from the queue")
    if response.status_code >= 400:
        raise SubmitRejected(f"HTTP {response.status_code}: {_detail(response)}")
    try:
        data = response.json()
        return Submission(request_id=data["request_id"], submitted_at=datetime.now(UTC))
    except (ValueError, KeyError) as exc:
        raise SubmitOutcomeUnknown(f"unreadable submit response ({exc})") from exc


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]


async def submit_job(record: JobRecord, session: BackendSession, endpoint: str) -> JobRecord:
    """Submit one job; a failure becomes the job's error, never a second paid request."""
    if not record.ok:
        return record
    try:
        submission = await post_once(session, endpoint, edit_arguments(record))
    except SubmitOutcomeUnknown as exc:
        return record.fail(
            UNKNOWN_OUTCOME_STAGE,
            f"row {record.row} ({record.job_id}): submission outcome unknown ({exc}); fal may have accepted and "
            "billed it, so it was not resent — check the fal dashboard, then re-run with force=true to submit again",
        )
    except SubmitRejected as exc:
        return record.fail("submit", f"row {record.row} ({record.job_id}): submission rejected: {exc}")
    return record.model_copy(update={"request_id": submission.request_id, "submitted_at": submission.submitted_at})


@task(name="submit", cache_policy=NO_CACHE, retries=0)
async def submit(record: JobRecord, session: BackendSession, endpoint: str) -> JobRecord:
    """Prefect task: submit one job. Never retried by Prefect (a retry could pay twice)."""
    result = await submit_job(record, session, endpoint)
    logger = get_run_logger()
    if result.request_id:
        logger.info("%s: submitted as request %s", record.job_id, result.request_id)
    elif result.error:
        logger.error("%s", result.error)
    return result
