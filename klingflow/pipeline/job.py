"""One job's life at fal, driven by the state machine of klingflow.ledger.decide.

`run_job` picks the starting point from the request ledger (the only persisted state): reuse a paid
result, resume a request fal has, settle a submit whose answer was lost, adopt work fal already did
for a ledger that never saw it, or upload and submit. From there `_Driver` performs one action at a
time (submit, poll, fetch the result, cancel, settle, download), turns each fal call's typed outcome
into an Event, asks `decide` for the next state and action, and writes every change of state to the
ledger before acting on it. A failing job ends as its report row; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from klingflow.detail import DETAIL
from klingflow.errors import FalError, FalRejected, FalTransient
from klingflow.fal.api import FalApi
from klingflow.fal.history import RecentRequests, find_by_payload
from klingflow.fal.outcomes import (
    Accepted,
    CancelReply,
    Done,
    Failure,
    Output,
    Queued,
    Rejected,
    Running,
)
from klingflow.fal.pricing import UnitPrice
from klingflow.fal.slots import SlotError, Slots
from klingflow.fal.submit import edit_arguments, payload_sha256, request_tags, submit_headers
from klingflow.fal.uploads import UploadCache, upload_job
from klingflow.ledger.budget import Budget
from klingflow.ledger.decide import Action, Event, JobState, decide
from klingflow.ledger.meaning import CANCELLED_BY, ERROR_FIELDS, MEANING, billed, may_have_request, resume_point
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.models import BILL_FIELDS, OUTPUT_FIELDS, CostSource, EditParams, JobRecord, JobStatus, Stage
from klingflow.pipeline.outputs import download_and_verify, materialised, output_is_intact

GROWTH = 1.5
CANCEL_GRACE_S = 60.0  # after a cancel, how long this run waits for fal's terminal answer
INTERRUPT_CANCEL_ATTEMPTS = 3  # a stopping run tries this often, then leaves the cancel to the hook or next run
INTERRUPT_CANCEL_S = 10.0
REPORT_GRACE_S = 6 * 3600.0  # a run on another host that saw a bill has this long to report it, then the next does
SETTLE_BACKOFF_S = (2.0, 4.0, 8.0, 15.0, 30.0)
HISTORY_BY_ID_WINDOW = timedelta(days=90)  # fal widens the history to 90 days when a request id is given
AT_FAL = frozenset({Action.submit, Action.poll, Action.fetch_result, Action.cancel, Action.settle})


@dataclass(frozen=True)
class PollSettings:
    interval_s: float
    max_interval_s: float
    timeout_s: float


def next_interval(current: float, settings: PollSettings) -> float:
    """The adaptive polling schedule: geometric growth, capped (fal_client's 0.1 s would be ~600 calls/min)."""
    return min(settings.max_interval_s, current * GROWTH)


@dataclass
class RunContext:
    """Everything a job needs from its run."""

    run_id: str
    params: EditParams
    fal: FalApi
    ledger: RequestLedger
    budget: Budget
    slots: Slots
    uploads: UploadCache
    poll: PollSettings
    recent: RecentRequests
    price: UnitPrice
    log: logging.Logger | logging.LoggerAdapter = field(default_factory=lambda: logging.getLogger("klingflow.job"))


async def run_job(job: JobRecord, ctx: RunContext) -> JobRecord:
    """The whole life of one job in this run; its failures end this job only."""
    if not job.ok or job.job_key is None:
        return job
    async with ctx.ledger.locked(job.job_key, ctx.run_id):
        entry = ctx.ledger.get(job.job_key)
        force = ctx.params.force
        if entry is None and not force and (adopted := await _adopt(job, ctx)) is not None:
            return adopted
        if entry is None or (force and not _at_fal_now(entry.state)):
            return await _new_request(job, ctx, entry)
        if entry.state is JobState.succeeded:
            return await _reuse(job, entry, ctx)
        if entry.state is JobState.failed_at_fal and _user_error(entry):
            return job.fail(
                Stage.collect,
                f"fal refused this exact input before ({entry.error}); fix the input, "
                "or re-run with force=true to pay for another attempt",
            )
        start = resume_point(
            entry.state, cancel_acknowledged=bool(entry.cancel_requested_at), reason=entry.cancel_reason
        )
        if start is None:
            return await _new_request(job, ctx, entry)
        resumed, entry = _resumed(job, entry, ctx)
        driver = _Driver(resumed, ctx, entry)
        done = await driver.run(start.state, start.action)
        if not driver.resubmits():
            return done
        ctx.log.info("%s: fal confirmed the cancel an interrupted run asked for; submitting the job again", job.where)
        return await _new_request(job, ctx, driver.entry)


def bill_fields(
    units: float | None, estimated_seconds: float | None, price: UnitPrice, *, failed: bool = False
) -> dict[str, Any]:
    """What a finished request cost at the run's price: fal's billable units, else (for an output) the
    estimate; an error result costs something only when fal says so."""
    if units is None and not failed:
        seconds, source = float(estimated_seconds or 0), CostSource.estimate
    elif units:
        seconds, source = float(units), CostSource.header
    else:
        return {"billed_seconds": 0.0 if failed else None, "cost_usd": None, "cost_source": CostSource.none}
    return {"billed_seconds": seconds, "cost_usd": price.cost(seconds), "cost_source": source, **price.bill()}


def _at_fal_now(state: JobState) -> bool:
    """A request fal accepted and has not finished: resumed even when forced (forcing would pay twice)."""
    return may_have_request(state) and state not in (JobState.submitting, JobState.unknown)


def _user_error(entry: LedgerEntry) -> bool:
    return entry.fal_status is not None and 400 <= entry.fal_status < 500 and entry.fal_status != 499


def _resumed(job: JobRecord, entry: LedgerEntry, ctx: RunContext) -> tuple[JobRecord, LedgerEntry]:
    """The job with what the ledger knows: its request, and its bill if fal was done; and the entry as written.

    The bill goes into exactly one report: the one of the run that saw it, or, if that run died before
    writing its report, this one (which then owns it; the driver writes on from this entry, so it keeps owning
    it); otherwise this row costs nothing.
    """
    fields: dict[str, Any] = {"request_id": entry.request_id}
    if entry.submitted_at or entry.submitting_at:
        fields["submitted_at"] = datetime.fromtimestamp(entry.submitted_at or entry.submitting_at or 0, UTC)
    if billed(entry.state):
        fields |= entry.model_dump(include=BILL_FIELDS)
        if ctx.ledger.carries_bill(entry):
            entry = ctx.ledger.write(entry, bill_owner=ctx.ledger.owner(ctx.run_id, REPORT_GRACE_S))
        else:
            fields |= _REUSED
    return job.with_(**fields), entry


_REUSED: dict[str, Any] = {"reused": True, "billed_seconds": 0.0, "cost_usd": 0.0, "cost_source": CostSource.reused}


async def _reuse(job: JobRecord, entry: LedgerEntry, ctx: RunContext) -> JobRecord:
    """A result already paid for: point at its output (downloading it again if the file is gone)."""
    job, entry = _resumed(job, entry, ctx)
    job = job.with_(**entry.model_dump(include=OUTPUT_FIELDS))
    if await output_is_intact(entry.output_path, entry.output_sha256):
        return (await materialised(job, ctx.params.output_dir)).with_(status=JobStatus.succeeded)
    start = MEANING[JobState.succeeded].resume
    assert start is not None
    return await _Driver(job, ctx, entry).run(start.state, start.action)


async def _adopt(job: JobRecord, ctx: RunContext) -> JobRecord | None:
    """Work the ledger never saw but fal already did (lost ledger, other state dir or machine): adopt it."""
    item = await ctx.recent.same_work(job)
    if item is None:
        return None
    ctx.log.warning(
        "%s: fal already has this exact edit (request %s, sent %s); adopting it instead of paying again",
        job.where,
        item.request_id,
        item.sent_at,
    )
    entry = _new_entry(
        job,
        ctx,
        JobState.submitted,
        request_id=item.request_id,
        submitted_at=(item.sent_at or datetime.now(UTC)).timestamp(),
    )
    job = job.with_(request_id=item.request_id, submitted_at=item.sent_at, **_REUSED)
    if item.output_url:
        entry = ctx.ledger.write(entry, state=JobState.completed, output_url=item.output_url)
        return await _Driver(job.with_(output_url=item.output_url), ctx, entry).run(JobState.completed, Action.download)
    entry = ctx.ledger.write(entry)
    return await _Driver(job, ctx, entry).run(JobState.submitted, Action.poll)


async def _new_request(job: JobRecord, ctx: RunContext, previous: LedgerEntry | None = None) -> JobRecord:
    """Reserve the budget, upload, then submit once (the driver takes it from there). `previous`: the key's
    entry of an earlier attempt, whose requests this one's settle must not take for its own."""
    estimate = job.estimated_cost_usd or 0.0
    if not ctx.budget.reserve(estimate):
        return job.fail(
            Stage.budget,
            f"not submitted: ${estimate:.2f} would exceed the budget of ${ctx.params.max_budget_usd:.2f} "
            f"(${ctx.budget.committed_usd:.2f} already committed)",
            status=JobStatus.skipped_budget,
        )
    job = await upload_job(job, ctx.uploads)
    if not job.ok:
        ctx.budget.settle(estimate, 0.0)
        return job
    decision = decide(JobState.planned, Event.uploaded)
    driver = _Driver(job, ctx, None, reserved=estimate, earlier_requests=_requests_of(previous))
    return await driver.run(decision.state, decision.action)


def _requests_of(entry: LedgerEntry | None) -> list[str]:
    """Every request fal was sent for the key so far: its earlier attempts' and the entry's own."""
    if entry is None:
        return []
    own = [entry.request_id] if entry.request_id and entry.request_id not in entry.earlier_requests else []
    return [*entry.earlier_requests, *own]


def _new_entry(job: JobRecord, ctx: RunContext, state: JobState, **fields: Any) -> LedgerEntry:
    return LedgerEntry(
        job_key=job.job_key or "",
        state=state,
        job_id=job.job_id,
        run_id=ctx.run_id,
        backend=ctx.fal.label,
        updated_at=time.time(),
        **fields,
    )


class _Driver:
    """Performs one job's actions until its life at fal is over in this run (or must wait for the next)."""

    def __init__(
        self,
        job: JobRecord,
        ctx: RunContext,
        entry: LedgerEntry | None,
        *,
        reserved: float | None = None,
        earlier_requests: list[str] | None = None,
    ) -> None:
        self.job, self.ctx, self.entry = job, ctx, entry
        self.earlier_requests = earlier_requests or []  # a new entry's predecessor's requests (see _submit)
        self.reserved = reserved if reserved is not None else job.estimated_cost_usd or 0.0
        if reserved is None:
            ctx.budget.reserve(self.reserved, force=True)  # already at fal: counts against the cap
        self.interval = ctx.poll.interval_s
        self.polls_started = False
        self.logs_seen = 0
        self.last_position: int | None = None
        self.cancel_deadline: float | None = None
        self.settle_attempt = 0
        self.failure: Failure | None = None
        self.note = ""

    # --- the loop ----------------------------------------------------------------------------------
    async def run(self, state: JobState, action: Action) -> JobRecord:
        if self.entry is not None and self.entry.state is not state:  # resumed elsewhere than it was left
            self._persist(state)
        async with AsyncExitStack() as slot:
            holding = False
            while action not in (Action.stop, Action.resume_later):
                if action in AT_FAL and not holding:
                    try:
                        await slot.enter_async_context(self.ctx.slots.hold())
                    except SlotError as exc:
                        return self._no_slot(action, exc)
                    holding = True
                elif action not in AT_FAL and holding:
                    await slot.aclose()
                    holding = False
                try:
                    event = await self._perform(action)
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    await asyncio.shield(self._interrupted(state))
                    raise
                state, action = self._move(state, event)
        return self._finish(state)

    def _move(self, state: JobState, event: Event) -> tuple[JobState, Action]:
        decision = decide(state, event)
        if decision.state is not state or event in (Event.accepted, Event.found, Event.downloaded):
            self._persist(decision.state, event)
        return decision.state, decision.action

    async def _interrupted(self, state: JobState) -> None:
        """The run is stopping: cancel a request fal has (once), and leave the rest resumable."""
        decision = decide(state, Event.interrupted)
        if decision.state is not state:
            self._persist(decision.state, Event.interrupted)
        if decision.action is Action.cancel:
            cancel = self.ctx.fal.cancel(self.job.request_id or "", attempts=INTERRUPT_CANCEL_ATTEMPTS)
            try:
                reply = await asyncio.wait_for(cancel, INTERRUPT_CANCEL_S)
            except (FalError, TimeoutError) as exc:
                self.ctx.log.warning(
                    "%s: could not cancel request %s (%s); the next run sends the cancel again",
                    self.job.job_id,
                    self.job.request_id,
                    exc,
                )
                return
            self._cancel_answered(reply)
            self.ctx.log.info(
                "%s: cancel of request %s on interruption: %s", self.job.job_id, self.job.request_id, reply.value
            )

    async def _perform(self, action: Action) -> Event:
        steps = {
            Action.submit: self._submit,
            Action.poll: self._poll,
            Action.fetch_result: self._fetch_result,
            Action.cancel: self._cancel,
            Action.settle: self._settle,
            Action.download: self._download,
        }
        return await steps[action]()

    # --- persistence --------------------------------------------------------------------------------
    def _persist(self, state: JobState, event: Event | None = None, **extra: Any) -> None:
        """Write `state` with the fields its meaning says it carries (klingflow.ledger.meaning)."""
        job, carries = self.job, MEANING[state].persists
        fields: dict[str, Any] = {"state": state, "request_id": job.request_id, **extra}
        owed = {"report_pending": True, "bill_owner": self.ctx.ledger.owner(self.ctx.run_id, REPORT_GRACE_S)}
        if carries & ERROR_FIELDS:
            fields |= {"error": job.error or self.note, "fal_status": self.failure.status if self.failure else None}
        if carries & BILL_FIELDS and (billed(state) or (job.cost_usd and not job.reused)):
            fields |= job.model_dump(include=carries & BILL_FIELDS) | (owed if not job.reused else {})
        fields |= job.model_dump(include=carries & OUTPUT_FIELDS)
        if "cancel_reason" in carries and event in CANCELLED_BY:
            fields["cancel_reason"] = CANCELLED_BY[event]
        if self.entry is None:
            self.entry = _new_entry(job, self.ctx, state)
        self.entry = self.ctx.ledger.write(self.entry, **fields)

    # --- actions ------------------------------------------------------------------------------------
    async def _submit(self) -> Event:
        """Write `submitting`, then POST once. The entry keeps the key's earlier requests: they had this very
        input, so if this answer is lost the settle must not take one of them (say, an earlier run's cancelled
        request) for this one, which would then run unwatched and be billed in no report."""
        if self.job.video_url is None:  # resent after a lost answer in an earlier run: upload in this one
            self.job = await upload_job(self.job, self.ctx.uploads)
            if not self.job.ok:
                self.note = self.job.error or "upload failed"
                return Event.rejected
        if self.entry is None and not self.ctx.params.force and (seen := await self.ctx.recent.before_submit(self.job)):
            self.ctx.log.warning(  # another run on this key sent it since this job started (klingflow.pipeline.peers)
                "%s: fal lists this exact edit as sent by another run (request %s); adopting it instead of paying",
                self.job.where,
                seen.request_id,
            )
            self.job = self.job.with_(request_id=seen.request_id, submitted_at=seen.sent_at, **_REUSED)
            return Event.accepted
        arguments = edit_arguments(self.job)
        earlier = _requests_of(self.entry) if self.entry is not None else self.earlier_requests
        self.job = self.job.with_(request_id=None, submitted_at=None)
        self._persist(
            JobState.submitting,
            submitting_at=time.time(),
            payload_sha256=payload_sha256(arguments),
            earlier_requests=earlier,
            cancel_requested_at=None,
            cancel_reason=None,
            error=None,
            fal_status=None,
        )
        headers = submit_headers(self.ctx.params.job_timeout_s, request_tags(self.ctx.run_id, self.job.job_key))
        outcome = await self.ctx.fal.submit_once(arguments, headers=headers)
        if isinstance(outcome, Accepted):
            now = datetime.now(UTC)
            self.job = self.job.with_(request_id=outcome.request_id, submitted_at=now)
            self.entry = self.ctx.ledger.write(self.entry, submitted_at=now.timestamp())
            self.ctx.log.info("%s: submitted as request %s", self.job.job_id, outcome.request_id, extra=DETAIL)
            return Event.accepted
        self.note = outcome.reason
        if isinstance(outcome, Rejected):
            self.job = self.job.fail(Stage.submit, f"submission rejected: {outcome.reason}")
            return Event.rejected
        self.ctx.log.warning(
            "%s: the submit's answer was lost (%s); looking for it in fal's request history",
            self.job.where,
            outcome.reason,
        )
        return Event.lost

    async def _poll(self) -> Event:
        if self.polls_started:
            wait = self.interval
            if (deadline := self._deadline()) is not None:
                wait = min(wait, max(0.0, deadline - time.time()))
            await asyncio.sleep(wait)
            self.interval = next_interval(self.interval, self.ctx.poll)
        self.polls_started = True
        if (deadline := self._deadline()) is not None and time.time() >= deadline:
            return Event.timed_out
        try:
            status = await self.ctx.fal.status(self.job.request_id or "", logs=True)
        except FalRejected as exc:
            return self._not_found(exc)
        except FalTransient as exc:
            return self._unreachable(exc)
        self.job = self.job.with_(status_polls=self.job.status_polls + 1)
        if isinstance(status, Queued):
            if status.position != self.last_position:
                self.last_position = status.position
                self.ctx.log.info("%s: in queue at position %s", self.job.job_id, status.position, extra=DETAIL)
            return Event.queued
        self._forward_logs(status.logs)
        if self.job.started_at is None:
            self.job = self.job.with_(started_at=datetime.now(UTC))
        if isinstance(status, Running):
            return Event.running
        assert isinstance(status, Done)
        completed = datetime.now(UTC)
        started = completed - timedelta(seconds=status.inference_s) if status.inference_s else self.job.started_at
        self.job = self.job.with_(completed_at=completed, started_at=started)
        return Event.done

    def _deadline(self) -> float | None:
        """Epoch seconds when waiting must stop: the job timeout, or the cancel's grace period."""
        if self.cancel_deadline is not None:
            return self.cancel_deadline
        if self.entry is not None and self.entry.state is JobState.cancel_requested:
            self.cancel_deadline = time.time() + CANCEL_GRACE_S
            return self.cancel_deadline
        submitted = self.job.submitted_at or datetime.now(UTC)
        return submitted.timestamp() + self.ctx.poll.timeout_s

    def _forward_logs(self, logs: tuple[dict[str, Any], ...]) -> None:
        """fal's new log lines since the last poll, as one run-log record (each record costs the API a row)."""
        new = [str(line.get("message", line)) for line in logs[self.logs_seen :]]
        if new:
            self.ctx.log.info("%s: [fal] %s", self.job.job_id, "\n".join(new), extra=DETAIL)
        self.logs_seen = max(self.logs_seen, len(logs))

    async def _fetch_result(self) -> Event:
        try:
            result = await self.ctx.fal.result(self.job.request_id or "")
        except FalRejected as exc:
            return self._not_found(exc)
        except FalTransient as exc:
            return self._unreachable(exc)
        if isinstance(result, Output):
            self.job = self.job.with_(output_url=result.video_url, **self._bill(result.billable_units))
            return Event.output
        self.failure = result
        self.job = self.job.with_(**self._bill(result.billable_units, failed=True))
        if result.cancelled:
            self.job = self.job.fail(Stage.collect, self._cancel_reason(), status=JobStatus.cancelled)
            return Event.cancelled
        billed = f" (fal billed ${self.job.cost_usd:.2f} for it)" if self.job.cost_usd else ""
        self.job = self.job.fail(Stage.collect, f"HTTP {result.status}: {result.reason}{billed}")
        return Event.failed

    def _bill(self, units: float | None, *, failed: bool = False) -> dict[str, Any]:
        """The bill fields of a finished request; reused rows (adopted work) keep costing nothing."""
        if self.job.reused:
            return {}
        return bill_fields(units, self.job.estimated_seconds, self.ctx.price, failed=failed)

    def _cancel_reason(self) -> str:
        cancelled = f"request {self.job.request_id} cancelled at fal (not billed)"
        return f"{self._why_cancelled()}; {cancelled}" if self.entry and self.entry.cancel_reason else cancelled

    def _why_cancelled(self) -> str:
        """Why this request's cancel was sent, as a row says it (from the ledger's typed reason)."""
        reason = self.entry.cancel_reason if self.entry else None
        return reason.says(self.ctx.poll.timeout_s) if reason else "an earlier run asked fal to cancel it"

    def resubmits(self) -> bool:
        """fal confirmed a cancel that is no verdict on the job (an interrupted run's): the job is submitted again."""
        entry = self.entry
        return bool(
            entry and entry.state is JobState.cancelled and entry.cancel_reason and entry.cancel_reason.resubmits
        )

    async def _cancel(self) -> Event:
        why = self._why_cancelled()
        self.ctx.log.warning("%s: %s; cancelling request %s", self.job.job_id, why, self.job.request_id)
        try:
            reply = await self.ctx.fal.cancel(self.job.request_id or "")
        except FalTransient as exc:
            self.note = f"{why}; the cancel failed ({exc})"
            return Event.transient
        self._cancel_answered(reply)
        self.polls_started = False
        return {
            CancelReply.requested: Event.cancel_accepted,
            CancelReply.already_completed: Event.cancel_too_late,
            CancelReply.not_found: Event.not_found,
        }[reply]

    def _cancel_answered(self, reply: CancelReply) -> None:
        """fal took the cancel (or the request is already done): the hook and the next run wait for its
        outcome instead of sending another. A request fal does not know is settled, not acknowledged."""
        if self.entry is not None and reply is not CancelReply.not_found:
            self.entry = self.ctx.ledger.write(self.entry, cancel_requested_at=time.time())

    async def _settle(self) -> Event:
        """Look for a lost submit in fal's history, re-checking over the settle window."""
        entry = self.entry
        assert entry is not None
        if self.settle_attempt:
            delay = SETTLE_BACKOFF_S[min(self.settle_attempt - 1, len(SETTLE_BACKOFF_S) - 1)]
            await asyncio.sleep(min(delay, max(0.5, self._settle_deadline() - time.time())))
        self.settle_attempt += 1
        if self.job.request_id:
            return await self._settle_by_id(self.job.request_id)
        sent = entry.submitting_at or entry.updated_at
        try:
            sighting = await find_by_payload(
                self.ctx.fal, entry.payload_sha256 or "", sent, not_these=entry.earlier_requests
            )
        except FalError as exc:
            self.note = f"fal's request history could not be read ({exc})"
            return Event.transient
        item = sighting.item
        if item is not None:
            self.ctx.log.info("%s: found request %s in fal's history; adopting it", self.job.job_id, item.request_id)
            self.job = self.job.with_(request_id=item.request_id, submitted_at=item.sent_at or self.job.submitted_at)
            return Event.found
        if time.time() < self._settle_deadline():
            return Event.not_yet
        if sighting.complete:
            self.ctx.log.warning(
                "%s: no request with this input in fal's history %.0f s after it was sent; submitting it again",
                self.job.job_id,
                time.time() - sent,
            )
            return Event.absent
        self.note = (
            "fal's history lists requests without stored payloads in that window, so it cannot prove "
            "the submit was lost"
        )
        return Event.timed_out

    async def _settle_by_id(self, request_id: str) -> Event:
        """A request fal accepted whose id it no longer serves (its result expired): what did it end with?"""
        try:
            items = await self.ctx.fal.history(start=datetime.now(UTC) - HISTORY_BY_ID_WINDOW, request_id=request_id)
        except FalError as exc:
            self.note = f"fal's request history could not be read ({exc})"
            return Event.transient
        item = next((i for i in items if i.request_id == request_id), None)
        if item is not None and item.output_url:
            self.job = self.job.with_(output_url=item.output_url, **self._bill(None))
            return Event.output
        if item is not None and item.status_code is not None and item.status_code >= 400:
            self.failure = Failure(item.status_code, "ended with an error (from fal's request history)")
            self.job = self.job.fail(Stage.collect, f"request {request_id} ended with HTTP {item.status_code}")
            return Event.failed
        self.note = f"fal accepted request {request_id} but neither serves nor lists how it ended"
        return Event.timed_out  # accepted once: never resent automatically

    def _settle_deadline(self) -> float:
        entry = self.entry
        sent = (entry.submitting_at or entry.updated_at) if entry else time.time()
        return sent + self.ctx.params.settle_window_s

    async def _download(self) -> Event:
        done = await download_and_verify(self.job, self.ctx.fal, self.ctx.params.output_dir)
        if done.status is JobStatus.succeeded:
            self.job = done
            self.ctx.log.info(
                "%s: %s (%.2f s, $%.2f)",
                done.job_id,
                done.output_path,
                done.output_duration_s or 0,
                done.cost_usd or 0,
                extra=DETAIL,
            )
            return Event.downloaded
        self.job = done.with_(
            error=f"{done.error} — this result is paid for (request {done.request_id}); "
            "the next run downloads it without paying again"
        )
        return Event.download_failed

    # --- outcomes that say where fal stands ----------------------------------------------------------
    def _not_found(self, exc: FalRejected) -> Event:
        self.note = f"fal no longer knows request {self.job.request_id} ({exc})"
        return Event.not_found

    def _unreachable(self, exc: FalTransient) -> Event:
        self.note = f"fal could not be asked about request {self.job.request_id} ({exc})"
        return Event.transient

    # --- the row ------------------------------------------------------------------------------------
    def _no_slot(self, action: Action, exc: SlotError) -> JobRecord:
        """No slot could be had: nothing more was sent to fal; a request it has is collected next run."""
        self.ctx.budget.settle(self.reserved, self.job.cost_usd or 0.0)
        if action is Action.submit and not may_have_request(self.entry.state if self.entry else JobState.planned):
            return self.job.fail(Stage.submit, f"not submitted: {exc}")
        return self.job.fail(
            Stage.collect_unreachable,
            f"{exc}; the request stays recorded and the next run collects it without paying again",
        )

    def _finish(self, state: JobState) -> JobRecord:
        job = self.job
        self.ctx.budget.settle(self.reserved, job.cost_usd or 0.0)
        if state is JobState.succeeded:
            return job
        if state is JobState.completed:
            return job if not job.ok else job.fail(Stage.download, self.note)
        if state in (JobState.failed_at_fal, JobState.cancelled, JobState.failed_before_submit):
            return job if not job.ok else job.fail(Stage.collect, self.note)
        if state is JobState.submitted:
            return job.fail(
                Stage.collect_unreachable,
                f"{self.note}; the request stays recorded and the next run collects it without paying again",
            )
        if state is JobState.cancel_requested:
            return job.fail(
                Stage.cancel_unconfirmed,
                f"{self.note or self._why_cancelled()}; cancel requested at fal but not confirmed — it may still "
                "complete and be billed; the next run resumes it",
            )
        return job.fail(Stage.submit_unknown, self._unknown_reason())

    def _unknown_reason(self) -> str:
        entry = self.entry
        sent = (entry.submitting_at or entry.updated_at) if entry else time.time()
        when = datetime.fromtimestamp(sent, UTC).isoformat(timespec="seconds")
        why = self.note or "no match in fal's request history yet"
        return (
            f"run {entry.run_id if entry else self.ctx.run_id} was submitting this job at {when} and never learnt "
            f"whether fal accepted it ({why}); it was not resent, since that could pay twice. The next run checks "
            f"fal's request history again (settle window {self.ctx.params.settle_window_s:.0f} s); check the fal "
            "dashboard, or re-run with force=true to submit it again"
        )
