"""The calls a run makes to fal, as a Protocol: FalQueue is the real one (fal or the simulator over HTTP);
a test may hand the job driver a scripted stand-in through its RunContext instead of patching anything."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from klingflow.fal.outcomes import CancelReply, HistoryItem, QueueStatus, Result, SubmitOutcome


class FalApi(Protocol):
    """What the job driver, uploads, downloads and the history reads use of a fal connection."""

    endpoint: str

    @property
    def label(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    async def submit_once(
        self, arguments: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> SubmitOutcome: ...

    async def status(self, request_id: str, *, logs: bool = True) -> QueueStatus: ...

    async def result(self, request_id: str) -> Result: ...

    async def cancel(self, request_id: str, *, attempts: int | None = None) -> CancelReply: ...

    async def history(
        self, *, start: datetime, end: datetime | None = None, request_id: str | None = None, payloads: bool = True
    ) -> list[HistoryItem]: ...

    async def upload(self, path: str | Path) -> str: ...

    async def download(self, url: str, path: Path, *, max_bytes: int | None = None) -> int: ...

    async def is_served(self, url: str) -> bool: ...
