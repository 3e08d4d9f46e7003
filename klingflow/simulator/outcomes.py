"""How each way a request can end looks to the client: status `error`/`error_type`, result HTTP status
and body. OK is billed; INVALID only at FaultConfig.invalid_billed_rate (fal: a 422 "may still be
charged if a runner spent GPU time"); never 5xx, cancellations or start timeouts. Shapes follow
fal's docs: model errors are 422 with a `detail` list, request errors a flat
`{"detail": str, "error_type": str}` plus an X-Fal-Error-Type header (a cancellation is 499)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from klingflow.simulator.models import Outcome, OutputFile
from klingflow.simulator.validate import FieldError

ERROR_DOCS = "https://docs.fal.ai/model-apis/errors"


def error_docs_url(error_type: str) -> str:
    """The docs link fal puts in each model-error item's `url`."""
    return f"{ERROR_DOCS}#{error_type}"


class JobResult(BaseModel):
    """What finished a request."""

    outcome: Outcome
    output: OutputFile | None = None
    error: str | None = None
    error_type: str | None = None
    error_status: int | None = None
    error_body: Any = None
    input_duration_s: float | None = None  # of the probed input video (what a billed 422 charges)


def ok(output: OutputFile) -> JobResult:
    """A generated video."""
    return JobResult(outcome=Outcome.OK, output=output)


def invalid(errors: list[FieldError], input_duration_s: float | None = None) -> JobResult:
    """The provider rejected the input (422; `input_duration_s` once the video was probed)."""
    detail = [{**e.model_dump(), "url": error_docs_url(e.type)} for e in errors]
    return JobResult(
        outcome=Outcome.INVALID,
        error="; ".join(e.msg for e in errors),
        error_type=errors[0].type,
        error_status=422,
        error_body={"detail": detail},
        input_duration_s=input_duration_s,
    )


def request_error(outcome: Outcome, status: int, error_type: str, message: str) -> JobResult:
    """A request-level error (failure, cancellation, start timeout)."""
    return JobResult(
        outcome=outcome,
        error=message,
        error_type=error_type,
        error_status=status,
        error_body={"detail": message, "error_type": error_type},
    )


def failed(message: str = "Internal error while generating the video") -> JobResult:
    """The job failed on the provider side (500, not billed: fal does not bill 5xx)."""
    return request_error(Outcome.FAILED, 500, "runner_server_error", message)


def cancelled() -> JobResult:
    """Cancelled by the caller, queued or running (not billed): fal's 499 client_cancelled."""
    return request_error(Outcome.CANCELLED, 499, "client_cancelled", "Request was cancelled")


def start_timeout() -> JobResult:
    """Not started within X-Fal-Request-(Start-)Timeout (504 + X-Fal-Request-Timeout-Type: user)."""
    return request_error(Outcome.TIMEOUT, 504, "request_timeout", "Request timed out before processing started")
