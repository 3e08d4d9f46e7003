"""klingflow's one error tree: library errors (PyAV, httpx, fal_client) are translated at the edge
into these, each naming the job, the file and the reason."""

from __future__ import annotations


class KlingflowError(Exception):
    """Base of every error klingflow raises on purpose."""


class ManifestError(KlingflowError):
    """The manifest itself (or one row of it) cannot be read."""


class JobError(KlingflowError):
    """One job cannot go on; the rest of the batch does. The message names the row, the file and the reason
    (the stage it stopped at is the job record's `error_stage`)."""

    def __init__(self, reason: str, *, job_id: str | None = None, path: str | None = None) -> None:
        self.reason = reason
        self.job_id = job_id
        self.path = path
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = []
        if self.job_id is not None:
            parts.append(f"row {self.job_id}")
        if self.path:
            parts.append(f"file {self.path}")
        prefix = ", ".join(parts)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class MediaError(KlingflowError):
    """A media file is unreadable or unusable; preprocessing wraps it into a JobError."""


class BackendError(KlingflowError):
    """The fal backend (real or simulated) could not be reached or configured."""
