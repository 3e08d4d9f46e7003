"""What klingflow sends to the endpoint, and the headers that let fal drop what never started.

The input is validated against the endpoint's schema (klingflow.endpoint.EditInput). Every submit
carries a server-side start deadline derived from the per-job timeout (`X-Fal-Request-Timeout`, and
`X-Fal-Request-Start-Timeout` as the newest fal_client names it): a request that has not started by
then is dropped by fal unbilled, so the client-side cancel is only ever needed for running requests.
klingflow never sends `X-Fal-Store-IO: 0`: the request history's payloads are how a lost submit
answer is settled.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from klingflow.endpoint import EditInput, ElementInput
from klingflow.models import JobRecord


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


def payload_sha256(arguments: dict[str, Any]) -> str:
    """A stable hash of a request's input, as sent and as fal's history lists it back."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit_headers(job_timeout_s: float) -> dict[str, str]:
    """The start deadline: fal drops (unbilled) a request not started within the job's timeout."""
    seconds = str(max(1, math.ceil(job_timeout_s)))
    return {"X-Fal-Request-Timeout": seconds, "X-Fal-Request-Start-Timeout": seconds}
