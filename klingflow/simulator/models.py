"""The simulator's records: one queue request, its log lines and its billing ledger entry."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from klingflow.endpoint import PRICE_PER_SECOND_USD

QueueStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
JobFault = Literal["fail", "hang", "reject"]


def utcnow() -> datetime:
    """Aware UTC now (every timestamp the simulator writes is aware)."""
    return datetime.now(UTC)


class Outcome(StrEnum):
    """How a COMPLETED request ended; `ok` is billed, `invalid` sometimes (see FaultConfig)."""

    OK = "ok"
    INVALID = "invalid"  # 422: the provider rejected the input (billed only at FaultConfig.invalid_billed_rate)
    FAILED = "failed"  # 500: injected job failure
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"  # not started within X-Fal-Request-(Start-)Timeout


class LogLine(BaseModel):
    """A log item as fal's status endpoint returns it."""

    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: datetime = Field(default_factory=utcnow)


class OutputFile(BaseModel):
    """Where a result video is stored (the URL is built per response, so it follows the current port)."""

    slot: str
    name: str
    size: int
    duration_s: float


class RequestRecord(BaseModel):
    """One queue request, persisted as requests/<id>.json on every state change."""

    request_id: str
    endpoint: str
    key_id: str
    input: Any
    status: QueueStatus = "IN_QUEUE"
    outcome: Outcome | None = None
    submitted_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    start_timeout_s: float | None = None
    store_io: bool = True  # False when submitted with X-Fal-Store-IO: 0 (no payloads in the history)
    tags: dict[str, str] = Field(default_factory=dict)  # X-Fal-Tags as the gateway kept them
    fault: JobFault | None = None
    logs: list[LogLine] = Field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    error_status: int | None = None
    error_body: Any = None
    output: OutputFile | None = None
    billed_seconds: int | None = None
    inference_time_s: float | None = None


class LedgerEntry(BaseModel):
    """One billed request (a line of ledger.jsonl). Money is Decimal, serialised as a string: cost_usd is
    what was charged (after the key's discount), cost_subtotal the same units at the list unit_price."""

    request_id: str
    endpoint: str
    key_id: str
    input: Any
    billed_seconds: int
    cost_usd: Decimal
    unit_price: Decimal = PRICE_PER_SECOND_USD
    percent_discount: float | None = None
    cost_subtotal: Decimal | None = None  # None in lines written before discounts existed: = cost_usd
    tags: dict[str, str] = Field(default_factory=dict)
    submitted_at: datetime
    started_at: datetime | None
    completed_at: datetime
