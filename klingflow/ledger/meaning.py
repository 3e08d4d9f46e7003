"""What each job state means besides its transitions: one row per state, next to decide.TABLE.

`MEANING[state]` says, for every JobState, where a resumed job starts, whether fal has (or may have) a
request, whether fal billed it, which ledger fields a write of the state carries, and what the row of a
run stopped in that state says. The driver (klingflow.pipeline.job), the stopped run's rows
(klingflow.pipeline.rows) and the cancellation hook read it instead of keeping their own lists;
tests/ledger/test_meaning.py checks that every state has a row and that every state TABLE reaches does,
so a new state cannot be half-added.

Why a request was cancelled is a value too (`CancelReason`, kept on the ledger entry), never a message
to parse. A cancel sent because the run was interrupted is no verdict on the job: the run that resumes
it submits the job again once fal confirms the cancel, and a cancel fal never acknowledged is let go
(the request is collected). A cancel at the job's timeout, or of a cancelled flow run, stays a cancel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from klingflow.ledger.decide import Action, Decision, Event, JobState
from klingflow.models import BILL_FIELDS, OUTPUT_FIELDS

ERROR_FIELDS = frozenset({"error", "fal_status"})  # how fal ended a request (and the row's reason)
CANCEL_FIELDS = frozenset({"cancel_reason"})  # why the cancel was sent


class CancelReason(enum.StrEnum):
    """Why klingflow asked fal to cancel a request (persisted: the run that learns the outcome acts on it)."""

    timeout = "timeout"  # the per-job deadline passed: the job is over
    interrupted = "interrupted"  # the run was stopping (Ctrl-C, SIGTERM, a cancelled task): the job is not
    run_cancelled = "run_cancelled"  # the flow run was cancelled (its on_cancellation hook sent it): the job is over

    @property
    def resubmits(self) -> bool:
        """A confirmed cancel of this kind sends the job again in the run that confirms it."""
        return self is CancelReason.interrupted

    def says(self, timeout_s: float) -> str:
        """How a row explains the cancel."""
        return {
            CancelReason.timeout: f"timed out after {timeout_s:.0f} s",
            CancelReason.interrupted: "the run was interrupted",
            CancelReason.run_cancelled: "the flow run was cancelled",
        }[self]


# the events that move a request into `cancel_requested`, as the reason that cancel is sent for
CANCELLED_BY: dict[Event, CancelReason] = {
    Event.timed_out: CancelReason.timeout,
    Event.interrupted: CancelReason.interrupted,
}


@dataclass(frozen=True)
class StateMeaning:
    resume: Decision | None  # where a resumed job starts (None: nothing to resume — a new request, or refused)
    at_fal: bool  # fal has, or may have, a request: never submitted again from here
    billed: bool  # fal produced an output and billed it
    persists: frozenset[str]  # the ledger fields a write of this state takes from the job (besides its state)
    stopped: str  # the row of a run stopped with the job here (cancelled, at no cost: the collecting run bills it)


S, A = JobState, Action
_SUBMIT_UNKNOWN = (
    "the run stopped while this job was being submitted; the next run looks for it in fal's request history "
    "before it submits again"
)
_NOT_SUBMITTED = "the run was stopped before this job was submitted (nothing billed)"
_ENDED = ERROR_FIELDS | BILL_FIELDS  # an ending carries its error, and its bill when fal billed the error

MEANING: dict[JobState, StateMeaning] = {
    S.planned: StateMeaning(None, at_fal=False, billed=False, persists=frozenset(), stopped=_NOT_SUBMITTED),
    # the POST
    S.submitting: StateMeaning(  # a crash mid-POST: its answer is lost
        Decision(S.unknown, A.settle), at_fal=True, billed=False, persists=frozenset(), stopped=_SUBMIT_UNKNOWN
    ),
    S.unknown: StateMeaning(
        Decision(S.unknown, A.settle), at_fal=True, billed=False, persists=frozenset(), stopped=_SUBMIT_UNKNOWN
    ),
    # at fal
    S.submitted: StateMeaning(
        Decision(S.submitted, A.poll),
        at_fal=True,
        billed=False,
        persists=frozenset(),
        stopped="the run was stopped while this job was at fal; its request was asked to cancel, and the next run "
        "records what fal finally says (fal may still complete and bill it)",
    ),
    S.cancel_requested: StateMeaning(  # acknowledged; a cancel fal never acknowledged: see resume_point
        Decision(S.cancel_requested, A.poll),
        at_fal=True,
        billed=False,
        persists=CANCEL_FIELDS,
        stopped="the run was stopped while this job was at fal; its request was asked to cancel, and the next run "
        "records what fal finally says (fal may still complete and bill it)",
    ),
    # paid for
    S.completed: StateMeaning(
        Decision(S.completed, A.download),
        at_fal=False,
        billed=True,
        persists=BILL_FIELDS,
        stopped="fal completed and billed this job before the run stopped; the next run downloads it and its "
        "report carries the bill",
    ),
    S.succeeded: StateMeaning(  # reused; downloaded again only when the file is gone
        Decision(S.succeeded, A.download),
        at_fal=False,
        billed=True,
        persists=OUTPUT_FIELDS,
        stopped="an earlier run paid for this edit; this run stopped before it reused the output (no charge)",
    ),
    # over: a later run submits it again (fal refusing the input itself is refused before: klingflow.pipeline.job)
    S.cancelled: StateMeaning(
        None,
        at_fal=False,
        billed=False,
        persists=_ENDED,
        stopped="the run was stopped and fal confirmed the cancel of this job's request (nothing billed)",
    ),
    S.failed_before_submit: StateMeaning(None, at_fal=False, billed=False, persists=_ENDED, stopped=_NOT_SUBMITTED),
    S.failed_at_fal: StateMeaning(
        None,
        at_fal=False,
        billed=False,
        persists=_ENDED,
        stopped="fal ended this job's request with an error before the run stopped (billed only if fal said so)",
    ),
}


def may_have_request(state: JobState) -> bool:
    """States in which fal has, or may have, a request for the job (never submit again from these)."""
    return MEANING[state].at_fal


def billed(state: JobState) -> bool:
    """States whose request produced an output fal billed."""
    return MEANING[state].billed


def resume_point(state: JobState, *, cancel_acknowledged: bool, reason: CancelReason | None) -> Decision | None:
    """Where a job the ledger left in `state` starts in this run: its state's `resume`, except for a cancel fal
    never acknowledged. That one is sent again, unless an interrupted run sent it: then the request is this
    run's to finish (polled as `submitted`: collected if it completes, the job resubmitted if it was cancelled)."""
    if state is S.cancel_requested and not cancel_acknowledged:
        if reason is not None and reason.resubmits:
            return Decision(S.submitted, A.poll)
        return Decision(S.cancel_requested, A.cancel)
    return MEANING[state].resume
