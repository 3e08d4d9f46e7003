"""How a flow run of `edit_videos` ends, by how many of its jobs succeeded (flows.edit_videos.final_state)."""

from __future__ import annotations

import pytest

from flows.edit_videos import RunSummary, final_state


def _summary(succeeded: int, failed: int) -> RunSummary:
    return RunSummary(
        run_id="r",
        jobs=succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        estimated_usd=0.0,
        cost_usd=0.0,
        report_path=None,
        html_path=None,
        statuses={},
    )


@pytest.mark.parametrize(
    ("succeeded", "failed", "fail_on_job_failure", "expected"),
    [
        (4, 0, False, ("COMPLETED", "Completed")),
        (4, 0, True, ("COMPLETED", "Completed")),
        (3, 1, False, ("COMPLETED", "3/4 succeeded")),
        (3, 1, True, ("FAILED", "Failed")),
        (0, 4, False, ("FAILED", "Failed")),
        (0, 0, False, ("COMPLETED", "Completed")),
    ],
)
def test_a_partly_successful_batch_is_completed_and_named_by_its_count(
    succeeded: int, failed: int, fail_on_job_failure: bool, expected: tuple[str, str]
) -> None:
    """Some jobs failed: Completed named "N/M succeeded", unless the run asked to fail; none succeeded: Failed."""
    message = f"{succeeded}/{succeeded + failed} job(s) succeeded, $0.00 billed"
    state = final_state(_summary(succeeded, failed), message, fail_on_job_failure=fail_on_job_failure)
    assert (state.type.value, state.name) == expected
    assert state.message == message
