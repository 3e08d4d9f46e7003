"""Pydantic models at the pipeline's boundaries: the manifest row, the flow's parameters and the
job record that each stage fills in and the report is built from."""

from __future__ import annotations

import enum
import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from klingflow.endpoint import DEFAULT_SHOT_TYPE, ENDPOINT_ID
from klingflow.errors import where


def default_state_dir() -> str:
    """Where caches, the request ledger and the embedded simulator's state live (KLINGFLOW_HOME)."""
    return os.environ.get("KLINGFLOW_HOME") or str(Path.home() / ".klingflow")


class ElementSpec(BaseModel):
    """An element as a manifest gives it: local paths or URLs of its images."""

    model_config = ConfigDict(extra="forbid")

    frontal: str
    references: list[str] = Field(default_factory=list)


class ManifestRow(BaseModel):
    """One edit as the user writes it. Paths are resolved against the manifest's folder on load."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    prompt: str
    video: str
    images: list[str] = Field(default_factory=list)
    elements: list[ElementSpec] = Field(default_factory=list)
    keep_audio: bool = True
    shot_type: str = DEFAULT_SHOT_TYPE


class Backend(enum.StrEnum):
    auto = "auto"
    simulator = "simulator"
    fal = "fal"


class TooLongPolicy(enum.StrEnum):
    """Clips over 10 s: trim to 10 s (default), or reject."""

    trim = "trim"
    reject = "reject"


class TooShortPolicy(enum.StrEnum):
    """Clips under 3 s: reject (default; padding changes content and is billed), or freeze the last frame."""

    reject = "reject"
    pad = "pad"


class AspectPolicy(enum.StrEnum):
    """Aspect ratios beyond 3:1 cannot have both sides in 720..2160: reject (default), or add black bars."""

    reject = "reject"
    pad = "pad"


class EditParams(BaseModel):
    """Parameters of the `edit_videos` flow (one model, so the Prefect UI renders a form): titled for people, in
    the order a user decides them (manifest, backend, budget, dry run, concurrency, then the rest)."""

    manifest: str = Field(description="Path of the manifest (CSV, JSONL or YAML)", title="Manifest file")
    backend: Backend = Field(
        Backend.auto,
        description="simulator, fal, or auto (fal when a key is configured, else the simulator)",
        title="Backend (fal or the simulator)",
    )
    max_budget_usd: float | None = Field(
        None, ge=0, description="Hard cap on this run's spend; None = no cap", title="Budget cap (USD)"
    )
    dry_run: bool = Field(
        False, description="Validate, preprocess and estimate; submit nothing", title="Dry run (estimate only)"
    )
    max_concurrency: int = Field(
        2, ge=1, le=200, description="Requests in flight at fal at once (all workers)", title="Requests in flight"
    )
    run_name: str | None = Field(
        None,
        max_length=200,
        description="A name for this run in reports (e.g. the batch); None = the Prefect flow run's name",
        title="Run name",
    )
    output_dir: str = Field("outputs", description="Where edited videos are downloaded", title="Output folder")
    report_dir: str = Field("reports", description="Where the parquet report history is written", title="Report folder")
    force: bool = Field(
        False, description="Re-run jobs that already have a successful result", title="Pay again for finished jobs"
    )
    fail_run_on_job_failure: bool = Field(
        False,
        description="End the run Failed when any job fails; otherwise a run where some jobs succeeded ends "
        "Completed, named by its count (e.g. 3/4 succeeded)",
        title="Fail the run when any job fails",
    )
    job_timeout_s: float = Field(
        3600.0, gt=0, description="Per job, from submission; then the request is cancelled", title="Job timeout (s)"
    )
    too_long: TooLongPolicy = Field(
        TooLongPolicy.trim, description="Clips over 10 s: trim to 10 s, or reject", title="Clips over 10 s"
    )
    too_short: TooShortPolicy = Field(
        TooShortPolicy.reject,
        description="Clips under 3 s: reject, or pad by freezing the last frame (billed as 3 s)",
        title="Clips under 3 s",
    )
    extreme_aspect: AspectPolicy = Field(
        AspectPolicy.reject,
        description="Aspect ratios beyond 3:1 (cannot fit 720-2160 px): reject, or letterbox",
        title="Aspect ratios beyond 3:1",
    )
    concurrency_limit: str = Field(
        "klingflow-fal", description="Name of the Prefect global concurrency limit", title="Global concurrency limit"
    )
    state_dir: str = Field(
        default_factory=default_state_dir,
        description="Caches and request ledger (must be shared by all workers)",
        title="State folder",
    )
    poll_interval_s: float = Field(
        0.25,
        gt=0,
        description="First status poll interval; grows to poll_max_interval_s",
        title="First poll interval (s)",
    )
    poll_max_interval_s: float = Field(
        5.0, gt=0, description="Longest wait between two status polls", title="Longest poll interval (s)"
    )
    settle_window_s: float = Field(
        900.0,
        gt=0,
        description="A submit whose answer was lost is resent only after fal's request history "
        "has not listed it for this long (seconds)",
        title="Settle window for a lost submit (s)",
    )
    input_fetch_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest an input URL's download may take; then only that job fails",
        title="Input download timeout (s)",
    )
    estimate_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long the estimate waits for slow inputs (seconds); rows not ready by then are estimated "
        "at the endpoint's longest output, and each job is still checked against the budget before it is paid",
        title="Estimate wait (s)",
    )
    job_task_runs_max: int = Field(
        200,
        ge=0,
        description="Runs of at most this many jobs show each job as its own Prefect task run (edit-<job id>); "
        "bigger runs do not (each task run costs the Prefect server CPU: at 1,000 jobs they made the run 1.2x "
        "slower here) and keep each job's detail in the run log and the report",
        title="Most jobs shown as task runs",
    )
    input_roots: list[str] = Field(
        default_factory=list,
        description="Folders the manifest's local files must be in (after links are resolved). Empty: any file "
        "for a run from the command line; the manifest's folder for a deployment run, the inbox for inbox runs",
        title="Allowed input folders",
    )
    input_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts http(s) inputs may come from (a name, or *.example.com for its subdomains); empty: any",
        title="Allowed input hosts",
    )
    allow_private_addresses: bool | None = Field(
        None,
        description="Fetch http(s) inputs whose host is a loopback, private or link-local address. Empty: yes for a "
        "run from the command line, no for deployment and inbox runs",
        title="Inputs from private addresses",
    )
    simulator_time_scale: float = Field(
        1.0, ge=0, description="Embedded simulator: processing seconds per video second", title="Simulator time scale"
    )
    endpoint: str = Field(ENDPOINT_ID, description="fal endpoint id", title="fal endpoint")


class JobStatus(enum.StrEnum):
    """A job's status in a run's report."""

    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    skipped_budget = "skipped_budget"
    dry_run = "dry_run"


NOT_OK = frozenset({JobStatus.failed, JobStatus.cancelled, JobStatus.skipped_budget})


class Stage(enum.StrEnum):
    """Where a job stopped (the report's `error_stage`)."""

    manifest = "manifest"
    preprocess = "preprocess"
    budget = "budget"
    upload = "upload"
    submit = "submit"
    submit_unknown = "submit-unknown"  # fal may have the request: settled through its history, never resent blindly
    collect = "collect"
    collect_unreachable = "collect-unreachable"  # fal not reached: the request stays resumable by the next run
    cancel_unconfirmed = "cancel-unconfirmed"  # cancel sent, fal's outcome not known yet: the next run resumes it
    download = "download"


class CostSource(enum.StrEnum):
    """Where a row's cost comes from."""

    header = "header"  # fal's X-Fal-Billable-Units on the result
    estimate = "estimate"  # fal billed it but sent no units: the estimate stands in
    reused = "reused"  # paid for by an earlier run (or another row of this run): 0 here
    billing_event = "billing_event"  # fal's own billing event for the request (`klingflow reconcile`)
    none = "none"


class PriceSource(enum.StrEnum):
    """Where the unit price of a row's costs comes from."""

    fal = "fal"  # fal's pricing API, read by this run (the account's own price, discounts included)
    cache = "cache"  # fal's pricing API, read by a run less than a day ago
    list_price = "list_price"  # klingflow.endpoint's documented list price: fal's could not be read


class PaidResult(BaseModel):
    """What a request bought: its output and its bill. The job record carries it through a run and the
    request ledger keeps it across runs, so a later run can reuse or resume it without paying again."""

    model_config = ConfigDict(extra="forbid")

    output_url: str | None = None
    output_path: str | None = None
    output_sha256: str | None = None
    output_bytes: int | None = None
    output_duration_s: float | None = None
    billed_seconds: float | None = None
    cost_usd: float | None = None
    cost_source: CostSource = CostSource.none
    unit_price_usd: float | None = None  # per billed second, as cost_usd was computed
    price_source: PriceSource | None = None


BILL_FIELDS = frozenset(
    {"output_url", "billed_seconds", "cost_usd", "cost_source", "unit_price_usd", "price_source"}
)  # known once fal is done
OUTPUT_FIELDS = frozenset(PaidResult.model_fields) - BILL_FIELDS  # known once the output is downloaded


class JobRecord(PaidResult):
    """One job as it moves through the stages; each stage returns an updated, validated copy (`with_`).

    A job that failed keeps `status="failed"` with `error` and `error_stage`; later stages pass it through.
    """

    job_id: str
    row: int
    prompt: str
    video: str  # as resolved from the manifest: absolute local path or URL
    images: list[str] = Field(default_factory=list)
    elements: list[ElementSpec] = Field(default_factory=list)
    keep_audio: bool = True
    shot_type: str = DEFAULT_SHOT_TYPE

    status: JobStatus = JobStatus.pending
    error: str | None = None
    error_stage: Stage | None = None

    # preprocess
    source: dict | None = None  # VideoProbe of the original input, as a dict
    source_sha256: str | None = None
    preprocess_actions: list[str] = Field(default_factory=list)
    input_path: str | None = None  # the file that is uploaded (original if passthrough)
    input_sha256: str | None = None
    input_bytes: int | None = None
    input_duration_s: float | None = None
    input_width: int | None = None
    input_height: int | None = None
    prepared_images: list[str] = Field(default_factory=list)
    prepared_elements: list[ElementSpec] = Field(default_factory=list)
    job_key: str | None = None  # identity of the paid work: hashes of inputs + prompt + params + endpoint
    estimated_seconds: int | None = None
    estimated_cost_usd: float | None = None

    # upload
    video_url: str | None = None
    image_urls: list[str] = Field(default_factory=list)
    element_urls: list[dict] = Field(default_factory=list)  # ElementInput dicts
    upload_cache_hits: int = 0
    uploaded_bytes: int = 0

    # submit / collect
    request_id: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    status_polls: int = 0
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.status not in NOT_OK

    @property
    def where(self) -> str:
        """ "row N (job id)": how every message about this job starts."""
        return where(self.row, self.job_id)

    def with_(self, **fields: object) -> JobRecord:
        """A validated copy with `fields` changed (unknown fields and wrong types raise)."""
        return type(self).model_validate({**self.model_dump(), **fields})

    def fail(
        self, stage: Stage, reason: str, *, path: str | None = None, status: JobStatus = JobStatus.failed
    ) -> JobRecord:
        """A copy of this job stopped at `stage`; the error is "row N (id)[, file P]: reason"."""
        error = f"{where(self.row, self.job_id, path)}: {reason}"
        return self.with_(status=status, error_stage=stage, error=error)
