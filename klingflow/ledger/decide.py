"""The job lifecycle as one explicit state machine: where a job's money stands, and what to do next.

`decide(state, event)` is the only place that decides; it is pure and table-tested over every pair
(tests/ledger/test_decide.py). The driver (klingflow.pipeline.job) turns each fal call's typed outcome
into an Event, asks `decide`, persists the new state in the request ledger and performs the action.

The rules that keep a job from being paid twice:
- a request fal accepted is never submitted again: every state that has (or may have) a request at
  fal leads only to polling, cancelling, settling or resuming it — `submit` is reachable from
  `unknown` only on `absent` (fal's history, read as documented, proves there is no such request);
- reads that fail (`transient`) never end a request: the state stays and the next run resumes it;
- a cancel is not a cancel until fal confirms it (`cancelled`); a request that completes anyway is
  `completed`, billed and collected;
- a result with a video is a bill (`completed`), whatever state asked for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from klingflow.errors import InvalidTransition


class JobState(enum.StrEnum):
    """Where a job's money stands. Persisted in the request ledger from `submitting` on."""

    planned = "planned"  # preprocessed, nothing at fal
    submitting = "submitting"  # written just before the POST
    submitted = "submitted"  # fal accepted it: request id known
    unknown = "unknown"  # the POST's answer was lost: fal may have it
    cancel_requested = "cancel_requested"  # cancel sent; waiting for fal's terminal answer
    completed = "completed"  # fal produced an output and billed it; not downloaded yet
    succeeded = "succeeded"  # output downloaded and verified
    cancelled = "cancelled"  # fal confirmed the cancel (nothing billed)
    failed_before_submit = "failed_before_submit"  # fal refused the POST (or it never arrived): nothing billed
    failed_at_fal = "failed_at_fal"  # fal ended the request with an error (billed if fal said so)

    @classmethod
    def _missing_(cls, value: object) -> JobState | None:
        return cls.failed_at_fal if value == "failed" else None  # ledgers written before the state machine


class Event(enum.StrEnum):
    """What the last step learnt (each from a typed fal outcome, a clock or the run)."""

    uploaded = "uploaded"  # the job's files are at fal: the POST can be sent
    accepted = "accepted"  # submit: fal queued it
    rejected = "rejected"  # submit: fal said no, or it provably never reached the queue
    lost = "lost"  # submit: the answer was lost (timeout after sending, dropped, 5xx)
    transient = "transient"  # a read or cancel failed even after retries: nothing learnt
    queued = "queued"  # status IN_QUEUE
    running = "running"  # status IN_PROGRESS
    done = "done"  # status COMPLETED: fetch the result
    output = "output"  # result: a video (billed)
    failed = "failed"  # result: an error (billed only if fal said so)
    cancelled = "cancelled"  # result: 499 client_cancelled
    not_found = "not_found"  # fal no longer knows the request id (its result expired)
    timed_out = "timed_out"  # the per-job deadline (or the cancel grace period) passed
    interrupted = "interrupted"  # the run is being stopped (Ctrl-C, SIGTERM, cancelled flow run)
    cancel_accepted = "cancel_accepted"  # cancel reply CANCELLATION_REQUESTED
    cancel_too_late = "cancel_too_late"  # cancel reply ALREADY_COMPLETED
    found = "found"  # history: the request is there (adopt its id)
    absent = "absent"  # history: settle window passed, payloads available, no such request
    not_yet = "not_yet"  # history: nothing yet, and absence not proven
    downloaded = "downloaded"
    download_failed = "download_failed"


class Action(enum.StrEnum):
    """What the driver does next."""

    submit = "submit"  # write `submitting`, POST once
    poll = "poll"  # ask the status again (after the polling interval)
    fetch_result = "fetch_result"
    cancel = "cancel"
    settle = "settle"  # look for the request in fal's history (after a backoff)
    download = "download"
    resume_later = "resume_later"  # stop here; the entry stays for the next run to resume
    stop = "stop"  # the job's life at fal is over


@dataclass(frozen=True)
class Decision:
    state: JobState
    action: Action


S, E, A = JobState, Event, Action
_FAL_HAS_IT = {  # states with a request at fal: how each read's answer moves them
    E.queued: A.poll,
    E.running: A.poll,
    E.done: A.fetch_result,
}

TABLE: dict[tuple[JobState, Event], Decision] = {
    (S.planned, E.uploaded): Decision(S.submitting, A.submit),
    (S.planned, E.interrupted): Decision(S.planned, A.stop),
    # the POST
    (S.submitting, E.accepted): Decision(S.submitted, A.poll),
    (S.submitting, E.rejected): Decision(S.failed_before_submit, A.stop),
    (S.submitting, E.lost): Decision(S.unknown, A.settle),
    (S.submitting, E.interrupted): Decision(S.unknown, A.resume_later),
    # waiting for fal
    **{(S.submitted, e): Decision(S.submitted, a) for e, a in _FAL_HAS_IT.items()},
    (S.submitted, E.output): Decision(S.completed, A.download),
    (S.submitted, E.failed): Decision(S.failed_at_fal, A.stop),
    (S.submitted, E.cancelled): Decision(S.cancelled, A.stop),
    (S.submitted, E.transient): Decision(S.submitted, A.resume_later),
    (S.submitted, E.not_found): Decision(S.unknown, A.settle),
    (S.submitted, E.timed_out): Decision(S.cancel_requested, A.cancel),
    (S.submitted, E.interrupted): Decision(S.cancel_requested, A.cancel),
    # a cancel is not a cancel until fal says so
    (S.cancel_requested, E.cancel_accepted): Decision(S.cancel_requested, A.poll),
    (S.cancel_requested, E.cancel_too_late): Decision(S.cancel_requested, A.fetch_result),
    **{(S.cancel_requested, e): Decision(S.cancel_requested, a) for e, a in _FAL_HAS_IT.items()},
    (S.cancel_requested, E.output): Decision(S.completed, A.download),
    (S.cancel_requested, E.failed): Decision(S.failed_at_fal, A.stop),
    (S.cancel_requested, E.cancelled): Decision(S.cancelled, A.stop),
    (S.cancel_requested, E.transient): Decision(S.cancel_requested, A.poll),  # bounded by the grace period
    (S.cancel_requested, E.not_found): Decision(S.unknown, A.settle),
    (S.cancel_requested, E.timed_out): Decision(S.cancel_requested, A.resume_later),
    (S.cancel_requested, E.interrupted): Decision(S.cancel_requested, A.resume_later),
    # a lost answer: fal's history is the second source of truth
    (S.unknown, E.found): Decision(S.submitted, A.poll),
    (S.unknown, E.absent): Decision(S.submitting, A.submit),
    (S.unknown, E.not_yet): Decision(S.unknown, A.settle),
    (S.unknown, E.output): Decision(S.completed, A.download),  # the history shows it finished with an output
    (S.unknown, E.failed): Decision(S.failed_at_fal, A.stop),  # ... or with an error
    (S.unknown, E.transient): Decision(S.unknown, A.resume_later),
    (S.unknown, E.timed_out): Decision(S.unknown, A.resume_later),
    (S.unknown, E.interrupted): Decision(S.unknown, A.resume_later),
    # paid for: get the output
    (S.completed, E.downloaded): Decision(S.succeeded, A.stop),
    (S.completed, E.download_failed): Decision(S.completed, A.resume_later),
    (S.completed, E.interrupted): Decision(S.completed, A.resume_later),
    (S.succeeded, E.downloaded): Decision(S.succeeded, A.stop),
    (S.succeeded, E.download_failed): Decision(S.completed, A.resume_later),
    (S.succeeded, E.interrupted): Decision(S.succeeded, A.resume_later),
    # over: nothing at fal (or a final error); a later run may try again from scratch
    **{
        (s, E.uploaded): Decision(S.submitting, A.submit)
        for s in (S.cancelled, S.failed_before_submit, S.failed_at_fal)
    },
}


def decide(state: JobState, event: Event) -> Decision:
    """The next state and action; InvalidTransition for a pair that cannot happen."""
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} cannot happen in state {state.value}") from None
