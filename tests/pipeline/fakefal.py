"""A scripted fal for the job driver's fast tests: the FalApi calls, answered from a script, no HTTP, no Prefect.

Each POST takes the next `Req` of the script: what the client hears (`answer`), whether fal queued it, the
statuses it plays, its result, and how it answers a cancel. fal's side is modelled just enough to keep the
money honest: a request that finishes with an output is a bill (`bills`), a cancel fal accepted ends the request
as 499, and the request history lists what fal queued (with its payload). Every call is recorded (`calls`), and
`stall` makes one call hang until its task is cancelled, so a test can stop a run at any state.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from klingflow.endpoint import ENDPOINT_ID
from klingflow.errors import FalError, FalRejected
from klingflow.fal.outcomes import (
    Accepted,
    CancelReply,
    Done,
    Failure,
    HistoryItem,
    Output,
    Queued,
    QueueStatus,
    Result,
    Running,
    SubmitOutcome,
)

CANCELLED = Failure(499, "cancelled", "client_cancelled")


@dataclass(frozen=True)
class Req:
    """One POST and the request fal makes of it."""

    answer: SubmitOutcome | None = None  # what the client hears (None: Accepted with the request's id)
    queued: bool = True  # fal has the request (False: the POST never reached the queue)
    statuses: tuple[QueueStatus, ...] = (Queued(0), Running(), Done())  # played in turn; the last one repeats
    result: Result | None = None  # None: an output (a bill)
    cancel: CancelReply | FalError = CancelReply.requested  # the answer to a cancel (an error is raised)


@dataclass
class _Request:
    request_id: str
    script: Req
    payload: dict[str, Any]
    sent_at: datetime
    played: int = 0
    cancelled: bool = False
    done: bool = False

    @property
    def outcome(self) -> Result:
        if self.cancelled:
            return CANCELLED
        return self.script.result or Output(f"https://fake.fal/outputs/{self.request_id}.mp4", 3.0)


@dataclass
class ScriptedFal:
    """FalApi from a script of `Req`s (one per POST, then the default `Req()`); `clip` is every output's bytes."""

    script: list[Req]
    clip: Path
    endpoint: str = ENDPOINT_ID
    label: str = "scripted fal"
    namespace: str = "scripted"
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, request id or url)
    bills: Counter[str] = field(default_factory=Counter)  # request id -> times billed (never more than 1)
    requests: dict[str, _Request] = field(default_factory=dict)
    _posts: int = 0
    _stalls: dict[tuple[str, int], asyncio.Event] = field(default_factory=dict)
    _seen: Counter[str] = field(default_factory=Counter)  # calls per method since its stall was armed

    # --- the script's controls ---------------------------------------------------------------------------
    def stall(self, method: str, *, call: int = 1) -> asyncio.Event:
        """The `call`-th call of `method` from now on never answers (until cancelled); the event says it was made."""
        self._seen[method] = 0
        reached = self._stalls[(method, call)] = asyncio.Event()
        return reached

    def count(self, method: str) -> int:
        return sum(m == method for m, _ in self.calls)

    async def _call(self, method: str, about: str) -> None:
        self.calls.append((method, about))
        self._seen[method] += 1
        if (reached := self._stalls.pop((method, self._seen[method]), None)) is not None:
            reached.set()
            await asyncio.Event().wait()  # until the task is cancelled

    def _finish(self, request: _Request) -> Result:
        """The request is over at fal: an output is billed (once)."""
        request.done = True
        outcome = request.outcome
        if isinstance(outcome, Output) and not self.bills[request.request_id]:
            self.bills[request.request_id] += 1
        return outcome

    def _known(self, request_id: str) -> _Request:
        if request_id not in self.requests:
            raise FalRejected(f"HTTP 404: request {request_id} not found", status=404)
        return self.requests[request_id]

    # --- FalApi ------------------------------------------------------------------------------------------
    async def submit_once(self, arguments: dict[str, Any], *, headers: dict[str, str] | None = None) -> SubmitOutcome:
        script = self.script[self._posts] if self._posts < len(self.script) else Req()
        self._posts += 1
        request_id = f"req-{self._posts}"
        if script.queued:
            self.requests[request_id] = _Request(request_id, script, arguments, datetime.now(UTC))
        await self._call("submit_once", request_id)
        return script.answer or Accepted(request_id)

    async def status(self, request_id: str, *, logs: bool = True) -> QueueStatus:
        await self._call("status", request_id)
        request = self._known(request_id)
        if request.cancelled or request.done:
            return Done()
        statuses = request.script.statuses
        status = statuses[min(request.played, len(statuses) - 1)]
        request.played += 1
        if isinstance(status, Done):
            self._finish(request)
        return status

    async def result(self, request_id: str) -> Result:
        await self._call("result", request_id)
        return self._finish(self._known(request_id))

    async def cancel(self, request_id: str, *, attempts: int | None = None) -> CancelReply:
        await self._call("cancel", request_id)
        request = self.requests.get(request_id)
        if request is None:
            return CancelReply.not_found
        reply = request.script.cancel
        if isinstance(reply, FalError):
            raise reply
        if request.done or reply is CancelReply.already_completed:
            self._finish(request)
            return CancelReply.already_completed
        request.cancelled = reply is CancelReply.requested
        return reply

    async def history(
        self, *, start: datetime, end: datetime | None = None, request_id: str | None = None, payloads: bool = True
    ) -> list[HistoryItem]:
        await self._call("history", request_id or "")
        return [
            _listed(r)
            for r in self.requests.values()
            if start <= r.sent_at and (end is None or r.sent_at < end) and request_id in (None, r.request_id)
        ]

    async def upload(self, path: str | Path) -> str:
        await self._call("upload", str(path))
        return f"https://fake.fal/files/{Path(path).name}"

    async def download(self, url: str, path: Path, *, max_bytes: int | None = None) -> int:
        await self._call("download", url)
        shutil.copyfile(self.clip, path)
        return path.stat().st_size

    async def is_served(self, url: str) -> bool:
        return True


def _listed(request: _Request) -> HistoryItem:
    """The request as fal's history lists it (with its payload; its output once it ended with one)."""
    outcome = request.outcome if request.done or request.cancelled else None
    output = {"video": {"url": outcome.video_url}} if isinstance(outcome, Output) else None
    code = 200 if isinstance(outcome, Output) else outcome.status if isinstance(outcome, Failure) else None
    return HistoryItem(
        request.request_id,
        sent_at=request.sent_at,
        started_at=request.sent_at,
        ended_at=None,
        status_code=code,
        json_input=request.payload,
        json_output=output,
    )


__all__ = ["CANCELLED", "Done", "Queued", "Req", "Running", "ScriptedFal"]
