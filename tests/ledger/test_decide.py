"""The job lifecycle's state machine: every (state, event) pair, and the rules that keep money safe."""

from __future__ import annotations

import itertools

import pytest

from klingflow.ledger.decide import (
    Action,
    Decision,
    Event,
    InvalidTransition,
    JobState,
    decide,
)
from klingflow.ledger.meaning import billed, may_have_request

# state, event -> next state, action. Every pair not listed here must be refused (InvalidTransition).
EXPECTED_TABLE = """
planned           uploaded         submitting        submit
planned           interrupted      planned           stop
submitting        accepted         submitted         poll
submitting        rejected         failed_before_submit stop
submitting        lost             unknown           settle
submitting        interrupted      unknown           resume_later
submitted         queued           submitted         poll
submitted         running          submitted         poll
submitted         done             submitted         fetch_result
submitted         output           completed         download
submitted         failed           failed_at_fal     stop
submitted         cancelled        cancelled         stop
submitted         transient        submitted         resume_later
submitted         not_found        unknown           settle
submitted         timed_out        cancel_requested  cancel
submitted         interrupted      cancel_requested  cancel
cancel_requested  cancel_accepted  cancel_requested  poll
cancel_requested  cancel_too_late  cancel_requested  fetch_result
cancel_requested  queued           cancel_requested  poll
cancel_requested  running          cancel_requested  poll
cancel_requested  done             cancel_requested  fetch_result
cancel_requested  output           completed         download
cancel_requested  failed           failed_at_fal     stop
cancel_requested  cancelled        cancelled         stop
cancel_requested  transient        cancel_requested  poll
cancel_requested  not_found        unknown           settle
cancel_requested  timed_out        cancel_requested  resume_later
cancel_requested  interrupted      cancel_requested  resume_later
unknown           found            submitted         poll
unknown           absent           submitting        submit
unknown           not_yet          unknown           settle
unknown           output           completed         download
unknown           failed           failed_at_fal     stop
unknown           transient        unknown           resume_later
unknown           timed_out        unknown           resume_later
unknown           interrupted      unknown           resume_later
completed         downloaded       succeeded         stop
completed         download_failed  completed         resume_later
completed         interrupted      completed         resume_later
succeeded         downloaded       succeeded         stop
succeeded         download_failed  completed         resume_later
succeeded         interrupted      succeeded         resume_later
cancelled         uploaded         submitting        submit
failed_before_submit uploaded      submitting        submit
failed_at_fal     uploaded         submitting        submit
"""


def _expected() -> dict[tuple[JobState, Event], Decision]:
    table = {}
    for line in EXPECTED_TABLE.strip().splitlines():
        state, event, next_state, action = line.split()
        table[(JobState(state), Event(event))] = Decision(JobState(next_state), Action(action))
    return table


EXPECTED = _expected()
ALL_PAIRS = list(itertools.product(JobState, Event))


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=[f"{s.value}-{e.value}" for s, e in ALL_PAIRS])
def test_every_pair_is_decided_as_the_table_says(state: JobState, event: Event) -> None:
    """Each (state, event) pair gives the listed decision, or is refused as impossible."""
    if (state, event) in EXPECTED:
        assert decide(state, event) == EXPECTED[(state, event)]
    else:
        with pytest.raises(InvalidTransition):
            decide(state, event)


def test_a_request_fal_may_have_is_only_resubmitted_once_its_absence_is_proven() -> None:
    """From every state with a request at fal, `submit` is reachable only by unknown + absent."""
    submits = {(s, e) for (s, e), d in EXPECTED.items() if d.action is Action.submit and may_have_request(s)}
    assert submits == {(JobState.unknown, Event.absent)}


def test_an_output_is_always_a_bill_and_a_failed_read_never_ends_a_request() -> None:
    """Every `output` lands in a billed state; `transient` never leaves a state that has a request."""
    for (state, event), decision in EXPECTED.items():
        if event is Event.output:
            assert billed(decision.state)
        if event is Event.transient:
            assert decision.state is state
        if event is Event.cancel_accepted:
            assert decision.state is JobState.cancel_requested  # a cancel is not a cancel until fal confirms


def test_legacy_failed_entries_read_as_failed_at_fal() -> None:
    """Ledgers written before the state machine said `failed`."""
    assert JobState("failed") is JobState.failed_at_fal
