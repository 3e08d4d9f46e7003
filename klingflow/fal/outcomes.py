"""What a fal call can answer, as small frozen values (like fal_client's Queued/InProgress/Completed).

The job lifecycle's decisions are driven by these, never by HTTP codes or exception text: the one
place that turns responses and transport errors into them is klingflow.fal.queue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Accepted:
    """fal queued the request: it exists, and will be billed if it produces an output."""

    request_id: str


@dataclass(frozen=True)
class Rejected:
    """fal answered and did not queue it (or it provably never reached the queue): nothing to pay."""

    reason: str
    status: int | None = None


@dataclass(frozen=True)
class Unknown:
    """A submit that may have been accepted (a lost answer, a 5xx after sending): never resend blindly."""

    reason: str


SubmitOutcome = Accepted | Rejected | Unknown


@dataclass(frozen=True)
class Queued:
    position: int | None = None


@dataclass(frozen=True)
class Running:
    logs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Done:
    """The queue says COMPLETED: the result (an output or an error) can be fetched."""

    logs: tuple[dict[str, Any], ...] = ()
    inference_s: float | None = None
    error_type: str | None = None


QueueStatus = Queued | Running | Done


@dataclass(frozen=True)
class Output:
    """A result with a video: fal billed it (`billable_units` from X-Fal-Billable-Units when sent)."""

    video_url: str
    billable_units: float | None = None


@dataclass(frozen=True)
class Failure:
    """A result that is an error. `billable_units` > 0 when fal charged it anyway (e.g. a 422 that used GPU)."""

    status: int
    reason: str
    error_type: str | None = None
    billable_units: float | None = None

    @property
    def cancelled(self) -> bool:
        """fal confirms the request was cancelled (499 / client_cancelled)."""
        return self.status == 499 or self.error_type == "client_cancelled"


Result = Output | Failure


class CancelReply(enum.StrEnum):
    """fal's answers to PUT …/cancel."""

    requested = "CANCELLATION_REQUESTED"  # queued: dropped; running: may still complete
    already_completed = "ALREADY_COMPLETED"
    not_found = "NOT_FOUND"


@dataclass(frozen=True)
class HistoryItem:
    """One request of the endpoint as fal's request history lists it."""

    request_id: str
    sent_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    status_code: int | None
    json_input: Any = field(default=None, repr=False)
    json_output: Any = field(default=None, repr=False)

    @property
    def has_payload(self) -> bool:
        return isinstance(self.json_input, dict)

    @property
    def output_url(self) -> str | None:
        """The video URL of a request that ended with an output (from its stored payload)."""
        video = self.json_output.get("video") if isinstance(self.json_output, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        return url if self.status_code == 200 and isinstance(url, str) else None


@dataclass(frozen=True)
class Price:
    """One entry of fal's pricing API: the caller's price per billing unit of an endpoint."""

    endpoint_id: str
    unit_price: Decimal
    unit: str
    currency: str


@dataclass(frozen=True)
class BillingEvent:
    """One request fal charged, as its billing events list it (admin key): the bill, after discounts."""

    request_id: str
    endpoint_id: str
    timestamp: datetime | None
    output_units: float | None
    unit_price: Decimal | None
    percent_discount: float | None
    cost_total: Decimal
