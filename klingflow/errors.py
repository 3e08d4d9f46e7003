"""klingflow's one error tree. Library errors (PyAV, httpx, fal_client) are translated at the edge into
these, each naming the job, the file and the reason; `where` builds the "row N (job id)" prefix that
every per-job message starts with.

    KlingflowError
    ├── ManifestError          the manifest (or one of its rows) cannot be read
    ├── JobError               one job cannot go on; the rest of the batch does
    ├── MediaError             a media file is unreadable or unusable
    │   └── DownloadError      a URL could not be streamed to a file
    ├── ReportSchemaError      a table does not match the report schema
    ├── LedgerSchemaError      the request ledger was written by a newer klingflow
    ├── LedgerUnavailable      the request ledger's database stayed unreachable through the retries
    ├── LedgerDamaged          the request ledger's SQLite file is damaged (`klingflow ledger rebuild`)
    ├── InvalidTransition      an event that cannot happen in a job's state (a bug: never guess with money)
    └── BackendError           fal (or the simulator) cannot be reached or configured
        └── FalError           a fal call failed in a way the caller must act on
            ├── FalTransient   try again later: nothing was decided at fal (429, 5xx, connection)
            └── FalRejected    fal answered and said no (4xx): nothing was queued, nothing billed

A submit's outcome is never an exception: it is a value (klingflow.fal.outcomes: Accepted, Rejected
or Unknown), decided on by the job's state machine.

The simulator's few exceptions (klingflow/simulator) are its own control flow: they never leave it
except as fal-shaped HTTP answers.
"""

from __future__ import annotations


def where(row: int | str, job_id: str, path: str | None = None) -> str:
    """The prefix of every per-job message: "row N (job id)", plus ", file P" when a file is involved."""
    prefix = f"row {row} ({job_id})"
    return f"{prefix}, file {path}" if path else prefix


class KlingflowError(Exception):
    """Base of every error klingflow raises on purpose."""


class ManifestError(KlingflowError):
    """The manifest itself (or one row of it) cannot be read."""


class JobError(KlingflowError):
    """One job cannot go on; the rest of the batch does. The message names the row, the file and the reason
    (the stage it stopped at is the job record's `error_stage`)."""

    def __init__(self, reason: str, *, row: int | str, job_id: str, path: str | None = None) -> None:
        self.reason = reason
        self.row = row
        self.job_id = job_id
        self.path = path
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{where(self.row, self.job_id, self.path)}: {self.reason}"


class MediaError(KlingflowError):
    """A media file is unreadable or unusable; preprocessing wraps it into a JobError."""


class DownloadError(MediaError):
    """A URL could not be downloaded; `too_large` past the byte ceiling, `retryable` for 429/5xx/transport."""

    def __init__(self, reason: str, *, too_large: bool = False, retryable: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large
        self.retryable = retryable


class ReportSchemaError(KlingflowError, ValueError):
    """A table does not match the report schema (nothing is written)."""


class LedgerSchemaError(KlingflowError):
    """The request ledger's database has a schema this klingflow cannot read (written by a newer one)."""


class LedgerUnavailable(KlingflowError):
    """The request ledger's database could not be reached, or stayed busy, for longer than a blip (a
    restart or a dropped connection is retried first): the job stops; the next run settles what it sent."""


class LedgerDamaged(KlingflowError):
    """The request ledger's SQLite file is damaged; the message names the file and the way forward."""

    def __init__(self, path: str, reason: str, *, remedy: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"the request ledger {path} is damaged ({reason}): {remedy}")


class InvalidTransition(KlingflowError, ValueError):
    """An event that cannot happen in a job's state: a driver bug. Never guess with money."""


class BackendError(KlingflowError):
    """The fal backend (real or simulated) could not be reached or configured."""


class FalError(BackendError):
    """A fal call failed; `status` is the HTTP status when fal answered."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s


class FalTransient(FalError):
    """Nothing was decided at fal (429, 5xx, a dropped or refused connection): the call may be repeated."""


class FalRejected(FalError):
    """fal answered and did not do it (4xx other than 429)."""
