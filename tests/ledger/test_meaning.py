"""Each job state's meaning (resume point, request at fal, bill, persisted fields, stopped row): one row per state,
checked against the transition table so a state cannot be added without its meaning."""

from __future__ import annotations

import itertools

import pytest

from klingflow.ledger.decide import TABLE, Action, Decision, Event, JobState
from klingflow.ledger.meaning import (
    CANCEL_FIELDS,
    CANCELLED_BY,
    ERROR_FIELDS,
    MEANING,
    CancelReason,
    resume_point,
)
from klingflow.ledger.store import LedgerEntry
from klingflow.models import BILL_FIELDS, OUTPUT_FIELDS

# state -> where a resumed job starts (state/action, or -), fal may have a request, billed, fields a write carries
EXPECTED_MEANING = """
planned              -                      no   no   -
submitting           unknown/settle         yes  no   -
submitted            submitted/poll         yes  no   -
unknown              unknown/settle         yes  no   -
cancel_requested     cancel_requested/poll  yes  no   cancel
completed            completed/download     no   yes  bill
succeeded            succeeded/download     no   yes  output
cancelled            -                      no   no   error+bill
failed_before_submit -                      no   no   error+bill
failed_at_fal        -                      no   no   error+bill
"""
FIELDS = {
    "-": frozenset(),
    "cancel": CANCEL_FIELDS,
    "bill": BILL_FIELDS,
    "output": OUTPUT_FIELDS,
    "error": ERROR_FIELDS,
}


def _start(text: str) -> Decision | None:
    """ "state/action" as a Decision ("-": None)."""
    if text == "-":
        return None
    state, action = text.split("/")
    return Decision(JobState(state), Action(action))


def _expected() -> dict[JobState, tuple[Decision | None, bool, bool, frozenset[str]]]:
    table = {}
    for line in EXPECTED_MEANING.strip().splitlines():
        state, resume, at_fal, billed, persists = line.split()
        start = _start(resume)
        fields = frozenset().union(*(FIELDS[part] for part in persists.split("+")))
        table[JobState(state)] = (start, at_fal == "yes", billed == "yes", fields)
    return table


EXPECTED = _expected()


def test_every_state_has_a_meaning_and_only_states_do() -> None:
    """A new JobState without its row in MEANING (or in this file's table) fails here."""
    assert set(MEANING) == set(JobState) == set(EXPECTED)


def test_every_state_the_table_reaches_has_a_meaning() -> None:
    """Every state TABLE moves from or to, and every resume point, is a state MEANING describes."""
    reached = {s for s, _ in TABLE} | {d.state for d in TABLE.values()}
    reached |= {m.resume.state for m in MEANING.values() if m.resume is not None}
    assert reached <= set(MEANING)


@pytest.mark.parametrize("state", list(JobState), ids=[s.value for s in JobState])
def test_each_states_meaning_is_as_the_table_says(state: JobState) -> None:
    """Resume point, request at fal, bill and persisted fields of each state, as written above."""
    meaning = MEANING[state]
    assert (meaning.resume, meaning.at_fal, meaning.billed, meaning.persists) == EXPECTED[state]
    assert meaning.stopped.strip()


def test_a_resumed_job_starts_where_the_table_can_go_on_and_never_submits() -> None:
    """Each resume point is a state with transitions out of it, and none of them sends a new POST."""
    for state, meaning in MEANING.items():
        if meaning.resume is None:
            assert not meaning.at_fal or state is JobState.planned, state  # a request at fal is always resumed
            continue
        assert meaning.resume.action not in (Action.submit, Action.stop, Action.resume_later)
        assert any(s is meaning.resume.state for s, _ in TABLE), meaning.resume


def test_every_way_into_a_cancel_records_why() -> None:
    """An event that moves a request into cancel_requested has a CancelReason, which that state persists."""
    into_cancel = {e for (s, e), d in TABLE.items() if d.state is JobState.cancel_requested and s is not d.state}
    assert into_cancel == set(CANCELLED_BY)
    assert CANCEL_FIELDS <= MEANING[JobState.cancel_requested].persists


def test_an_ending_persists_its_error_and_a_bill_its_fields() -> None:
    """States a request ends in (stop from a state with a request) carry the error; billed states carry the bill."""
    for (state, _), decision in TABLE.items():
        if decision.action is Action.stop and MEANING[state].at_fal and decision.state is not JobState.succeeded:
            assert ERROR_FIELDS <= MEANING[decision.state].persists, decision
    for state, meaning in MEANING.items():
        if meaning.billed:
            assert meaning.persists & (BILL_FIELDS | OUTPUT_FIELDS), state


# a cancel fal never acknowledged: acknowledged?, reason -> where the resumed job starts
EXPECTED_CANCEL_RESUME = """
yes  timeout        cancel_requested/poll
yes  interrupted    cancel_requested/poll
yes  run_cancelled  cancel_requested/poll
yes  -              cancel_requested/poll
no   timeout        cancel_requested/cancel
no   interrupted    submitted/poll
no   run_cancelled  cancel_requested/cancel
no   -              cancel_requested/cancel
"""


@pytest.mark.parametrize("line", EXPECTED_CANCEL_RESUME.strip().splitlines())
def test_a_cancel_is_resumed_by_its_reason(line: str) -> None:
    """An unacknowledged cancel is sent again, except an interrupted run's: that request is collected instead."""
    acknowledged, reason, start = line.split()
    expected = _start(start)
    cause = None if reason == "-" else CancelReason(reason)
    assert resume_point(JobState.cancel_requested, cancel_acknowledged=acknowledged == "yes", reason=cause) == expected


@pytest.mark.parametrize(
    ("state", "acknowledged", "reason"),
    list(itertools.product([s for s in JobState if s is not JobState.cancel_requested], [True, False], CancelReason)),
)
def test_other_states_resume_as_their_meaning_says(state: JobState, acknowledged: bool, reason: CancelReason) -> None:
    """Only cancel_requested looks at the cancel's acknowledgement and reason."""
    assert resume_point(state, cancel_acknowledged=acknowledged, reason=reason) == MEANING[state].resume


def test_only_an_interrupted_runs_cancel_resubmits() -> None:
    """A cancel at the timeout or of a cancelled flow run is the job's end; an interrupted run's is not."""
    assert {r for r in CancelReason if r.resubmits} == {CancelReason.interrupted}
    assert CancelReason.timeout.says(60.0) == "timed out after 60 s"
    assert set(CANCELLED_BY.values()) <= set(CancelReason)
    assert Event.interrupted in CANCELLED_BY


def test_a_ledger_row_written_before_cancel_reasons_reads_without_one() -> None:
    """Old JSON rows (no cancel_reason) stay readable; the reason round-trips as its enum."""
    old = '{"job_key":"k","state":"cancel_requested","job_id":"j","run_id":"r","backend":"sim","updated_at":0}'
    assert LedgerEntry.model_validate_json(old).cancel_reason is None
    entry = LedgerEntry.model_validate_json(old).model_copy(update={"cancel_reason": CancelReason.interrupted})
    assert LedgerEntry.model_validate_json(entry.model_dump_json()).cancel_reason is CancelReason.interrupted
