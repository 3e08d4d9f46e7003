"""Simulator and fault-injection settings: the pydantic models the CLI, the admin API and tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from klingflow.simulator.auth import DEFAULT_ADMIN_KEY, key_id

RouteKind = Literal["submit", "status", "result", "cancel", "upload", "token", "download", "platform"]
ROUTE_KINDS: tuple[str, ...] = get_args(RouteKind)
HttpFault = Literal["http_429", "ingress_5xx", "http_500", "drop", "drop_after"]
HTTP_FAULTS: tuple[str, ...] = get_args(HttpFault)

Rate = Field(default=0.0, ge=0.0, le=1.0)


class RouteFaults(BaseModel):
    """Per-route probabilities of each HTTP-level fault (one draw per call, so they must sum to <= 1).

    http_429:    429 + Retry-After (fal_client retries it).
    ingress_5xx: 502/503 with an nginx HTML body and no x-fal-request-id (fal_client retries it).
    http_500:    plain 500 JSON (fal_client does not retry it).
    drop:        connection closed mid-response BEFORE the route acts (nothing enqueued/stored).
    drop_after:  the route acts (e.g. submit enqueues a paid job), then the connection is closed;
                 fal_client retries, which is how real duplicate jobs happen.
    max_count:   stop injecting on this route after this many faults (None = unlimited), so a test
                 can say "fail exactly the first two submits".
    """

    model_config = ConfigDict(extra="forbid")

    http_429: float = Rate
    ingress_5xx: float = Rate
    http_500: float = Rate
    drop: float = Rate
    drop_after: float = Rate
    max_count: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _rates_fit_one_draw(self) -> RouteFaults:
        if sum(getattr(self, name) for name in HTTP_FAULTS) > 1.0 + 1e-9:
            raise ValueError("fault rates of one route must sum to at most 1")
        return self


class FaultConfig(BaseModel):
    """Seeded fault injection for one simulator run (change at runtime with set_faults / PUT /_simulator/faults)."""

    model_config = ConfigDict(extra="forbid")

    submit: RouteFaults = Field(default_factory=RouteFaults)
    status: RouteFaults = Field(default_factory=RouteFaults)
    result: RouteFaults = Field(default_factory=RouteFaults)
    cancel: RouteFaults = Field(default_factory=RouteFaults)
    upload: RouteFaults = Field(default_factory=RouteFaults)
    token: RouteFaults = Field(default_factory=RouteFaults)
    download: RouteFaults = Field(default_factory=RouteFaults)
    platform: RouteFaults = Field(default_factory=RouteFaults)
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After header value sent with 429s")
    job_failure_rate: float = Rate
    job_hang_rate: float = Rate
    fail_prompts_containing: list[str] = Field(default_factory=list)
    hang_prompts_containing: list[str] = Field(default_factory=list)
    reject_prompts_containing: list[str] = Field(
        default_factory=list, description="422 content_policy_violation for prompts containing any of these"
    )
    slow_download_rate: float = Rate
    slow_download_bytes_per_s: int = Field(default=256 * 1024, gt=0)
    cancel_running_completes_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of cancels of a running request that are answered 202 but ignored: it completes, billed",
    )
    invalid_billed_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of 422 (invalid input) results that are billed anyway"
    )

    def route(self, kind: str) -> RouteFaults:
        """The HTTP faults configured for one route kind."""
        return getattr(self, kind)


class SimulatorConfig(BaseModel):
    """Everything one simulator instance needs; see klingflow/simulator/__init__.py for the state_dir layout."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    time_scale: float = Field(default=1.0, ge=0.0, description="processing seconds per input-video second")
    concurrency_per_key: int = Field(default=2, ge=1)
    result_retention_s: float = Field(default=3600.0, gt=0.0)
    fast_copy: bool = False
    log_interval_s: float = Field(default=0.5, gt=0.0)
    history_lag_s: float = Field(
        default=0.0, ge=0.0, description="seconds after its start before a request shows in the request history"
    )
    faults: FaultConfig = Field(default_factory=FaultConfig)
    seed: int = 0
    key_discounts: dict[str, float] = Field(
        default_factory=dict, description="percent off the list price per key id (auth.key_id of the API key)"
    )
    admin_key_ids: list[str] = Field(
        default_factory=lambda: [key_id(DEFAULT_ADMIN_KEY)],
        description="key ids that may call the admin-only platform routes (billing events, usage)",
    )
    billing_events_delay_s: float = Field(
        default=0.0, ge=0.0, description="seconds after a charge before billing events and usage list it"
    )
    tagged_billing_delay_s: float = Field(
        default=0.0, ge=0.0, description="further seconds before source=tagged-billed lists it (fal: tagged lags)"
    )
    webhook_retries: int = Field(default=10, ge=0, description="retries of a failed webhook delivery (fal: 10)")
    webhook_retry_base_s: float = Field(default=15.0, gt=0.0, description="first retry delay, doubled per retry")
    webhook_retry_max_s: float = Field(default=1800.0, gt=0.0, description="cap on one webhook retry delay")
    webhook_timeout_s: float = Field(default=15.0, gt=0.0, description="seconds fal waits for a webhook answer")
    sync_run_timeout_s: float = Field(
        default=3600.0, gt=0.0, description="seconds a synchronous run (the /run base) may take before 504"
    )

    @model_validator(mode="after")
    def _discounts_are_percentages(self) -> SimulatorConfig:
        if any(not 0.0 <= pct <= 100.0 for pct in self.key_discounts.values()):
            raise ValueError("key_discounts are percentages between 0 and 100")
        return self
