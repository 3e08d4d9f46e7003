"""How each way a request can end looks to the client: status `error`/`error_type`, result HTTP status
and body. Only OK is billed. Shapes follow fal's docs: model errors are 422 with a `detail` list,
request errors a flat `{"detail": str, "error_type": str}` plus an X-Fal-Error-Type header."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from klingflow.simulator.models import Outcome, OutputFile
from klingflow.simulator.validate import FieldError


class JobResult(BaseModel):
    """What finished a request."""

    outcome: Outcome
    output: OutputFile | None = None
    error: str | None = None
    error_type: str | None = None
    error_status: int | None = None
    error_body: Any = None


def ok(output: OutputFile) -> JobResult:
    """A generated video."""
    return JobResult(outcome=Outcome.OK, output=output)


def invalid(errors: list[FieldError]) -> JobResult:
    """The provider rejected the input (422, not billed)."""
    detail = [e.model_dump() for e in errors]
    return JobResult(
        outcome=Outcome.INVALID,
        error="; ".join(e.msg for e in errors),
        error_type=errors[0].type,
        error_status=422,
        error_body={"detail": detail},
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
    """Cancelled by the caller, queued or running (not billed)."""
    return request_error(Outcome.CANCELLED, 400, "client_cancelled", "Request was cancelled")


def start_timeout() -> JobResult:
    """Not started within X-Fal-Request-Timeout (504 + X-Fal-Request-Timeout-Type: user)."""
    return request_error(Outcome.TIMEOUT, 504, "request_timeout", "Request timed out before processing started")
