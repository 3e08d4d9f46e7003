"""What klingflow sends to the endpoint, and the headers that let fal drop what never started.

The input is validated against the endpoint's schema (klingflow.endpoint.EditInput). Every submit
carries a server-side start deadline derived from the per-job timeout (`X-Fal-Request-Timeout`, and
`X-Fal-Request-Start-Timeout` as the newest fal_client names it): a request that has not started by
then is dropped by fal unbilled, so the client-side cancel is only ever needed for running requests.
klingflow never sends `X-Fal-Store-IO: 0`: the request history's payloads are how a lost submit
answer is settled. Every submit is tagged (`X-Fal-Tags`) with its run and job, so fal's own billing
events can be read per run (`klingflow reconcile`), a duplicate or orphan charge included.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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


# fal's limits on X-Fal-Tags (its gateway silently drops a pair that breaks them, so they are checked here)
TAG_KEY = re.compile(r"[a-z0-9._-]{1,64}")
TAG_VALUE_MAX = 256
TAG_PAIRS_MAX = 10
TAG_HEADER_MAX_BYTES = 1024
TAG_RUN = "klingflow.run"
TAG_JOB = "klingflow.job"
JOB_TAG_CHARS = 16  # a job key prefix: 64 bits tell a run's jobs apart, and stay readable on fal's dashboard


def pack_tags(tags: dict[str, str]) -> str:
    """The X-Fal-Tags value of `tags`; ValueError for a pair fal's gateway would drop (never sent silently
    short of a tag reconciliation relies on)."""
    for key, value in tags.items():
        if not TAG_KEY.fullmatch(key) or key.startswith("fal."):
            raise ValueError(f"tag key {key!r}: fal takes [a-z0-9._-], at most 64 characters, no 'fal.' prefix")
        if len(value) > TAG_VALUE_MAX or not value or any(c in value for c in ",=") or not value.isprintable():
            raise ValueError(f"tag {key}: the value must be 1-{TAG_VALUE_MAX} printable characters without , or =")
    if len(tags) > TAG_PAIRS_MAX:
        raise ValueError(f"{len(tags)} tags: fal keeps at most {TAG_PAIRS_MAX}")
    packed = ",".join(f"{key}={value}" for key, value in tags.items())
    if len(packed.encode()) > TAG_HEADER_MAX_BYTES:
        raise ValueError(f"tags take {len(packed.encode())} bytes: fal keeps at most {TAG_HEADER_MAX_BYTES}")
    return packed


def request_tags(run_id: str, job_key: str | None) -> dict[str, str]:
    """The tags of a job's request: its run, and the prefix of its job key (what the ledger is keyed by)."""
    tags = {TAG_RUN: run_id}
    if job_key:
        tags[TAG_JOB] = job_key[:JOB_TAG_CHARS]
    return tags


def submit_headers(job_timeout_s: float, tags: dict[str, str] | None = None) -> dict[str, str]:
    """The start deadline (fal drops, unbilled, a request not started within the job's timeout) and the tags."""
    seconds = str(max(1, math.ceil(job_timeout_s)))
    headers = {"X-Fal-Request-Timeout": seconds, "X-Fal-Request-Start-Timeout": seconds}
    if tags:
        headers["X-Fal-Tags"] = pack_tags(tags)
    return headers
