"""Queue response bodies exactly as fal_client 1.0.3 parses them (see fal-protocol.md section 2).

URLs are built per response from the caller's base URL and use the owner/alias-only form
{base}/fal-ai/kling-video/requests/{id}, like fal.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from klingflow.endpoint import EditOutput, FalFile
from klingflow.simulator.models import Outcome, RequestRecord
from klingflow.simulator.storage import Storage

APP_PREFIX = "fal-ai/kling-video"


def request_urls(base: str, request_id: str) -> dict[str, str]:
    """response_url, status_url and cancel_url of a request."""
    root = f"{base.rstrip('/')}/{APP_PREFIX}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def submit_body(rec: RequestRecord, base: str, position: int) -> dict[str, Any]:
    """The submit response."""
    return {
        "request_id": rec.request_id,
        "status": "IN_QUEUE",
        "queue_position": position,
        **request_urls(base, rec.request_id),
    }


def status_body(rec: RequestRecord, base: str, position: int, *, with_logs: bool) -> tuple[dict[str, Any], int]:
    """The status response and its HTTP code (202 until COMPLETED, then 200)."""
    body: dict[str, Any] = {"request_id": rec.request_id, "status": rec.status, **request_urls(base, rec.request_id)}
    if rec.status == "IN_QUEUE":
        body["queue_position"] = position
        return body, 202
    body["logs"] = [line.model_dump(mode="json") for line in rec.logs] if with_logs else None
    if rec.status == "IN_PROGRESS":
        return body, 202
    body["metrics"] = {"inference_time": rec.inference_time_s} if rec.inference_time_s is not None else {}
    if rec.outcome is not Outcome.OK:
        body["error"], body["error_type"] = rec.error, rec.error_type
    return body, 200


def output_body(rec: RequestRecord, base: str) -> dict[str, Any] | None:
    """The output JSON of a request that ended OK (None otherwise)."""
    if rec.outcome is not Outcome.OK or rec.output is None:
        return None
    out = rec.output
    video = FalFile(url=Storage.url(base, out.slot, out.name), file_name=out.name, file_size=out.size)
    return EditOutput(video=video).model_dump()


def retryable_header(rec: RequestRecord) -> str | None:
    """X-Fal-Retryable of a model error: a rejected input (422) is not worth resending as is; a runner
    failure (5xx) may succeed on a retry. Cancellations and start timeouts carry none."""
    if rec.outcome is Outcome.INVALID:
        return "false"
    if rec.outcome is Outcome.FAILED:
        return "true"
    return None


def result_response(rec: RequestRecord, base: str) -> Response:
    """The result: output JSON + x-fal-billable-units, or the request's error response (which carries
    x-fal-billable-units only when it was billed: a billed 422; unbilled errors have no such header)."""
    headers = {"x-fal-request-id": rec.request_id}
    if rec.status != "COMPLETED":
        return JSONResponse({"detail": "Request is still in progress"}, 400, headers=headers)
    if (output := output_body(rec, base)) is not None:
        headers["x-fal-billable-units"] = str(rec.billed_seconds or 0)
        return JSONResponse(output, 200, headers=headers)
    if rec.billed_seconds:
        headers["x-fal-billable-units"] = str(rec.billed_seconds)
    if rec.error_type:
        headers["x-fal-error-type"] = rec.error_type
    if (retryable := retryable_header(rec)) is not None:
        headers["x-fal-retryable"] = retryable
    if rec.outcome is Outcome.TIMEOUT:
        headers["x-fal-request-timeout-type"] = "user"
    return JSONResponse(rec.error_body, rec.error_status or 500, headers=headers)
