"""Submit: one POST per job, retried only when the queue provably did not get it."""

from __future__ import annotations

import socket
from pathlib import Path

import fal_client
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.fal.backend import BackendSession
from klingflow.media.synth import make_clip
from klingflow.models import Backend, JobRecord
from klingflow.simulator import FaultConfig, RouteFaults
from tasks.submit import SubmitOutcomeUnknown, SubmitRejected, edit_arguments, post_once, submit_job
from tests.conftest import SESSION_KEY as KEY


@pytest.fixture
async def arguments(tmp_path: Path, session: BackendSession) -> dict:
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    return {"prompt": "Edit @Video1", "video_url": await session.client.upload_file(clip)}


async def test_429_is_retried_and_submitted_once(simulator, session: BackendSession, arguments: dict) -> None:
    """Rate limiting rejects the request, so resending is safe: one request reaches the queue."""
    simulator.set_faults(FaultConfig(submit=RouteFaults(http_429=1.0, max_count=2), retry_after_s=0))
    submission = await post_once(session, ENDPOINT_ID, arguments)
    assert submission.request_id
    assert simulator.counters()["submits"] == 1
    assert simulator.counters()["faults"]["submit.http_429"] == 2


@pytest.mark.parametrize("fault", ["drop_after", "ingress_5xx", "http_500"])
async def test_ambiguous_failures_are_never_resent(
    simulator, session: BackendSession, arguments: dict, fault: str
) -> None:
    """A lost answer or a 5xx leaves the outcome unknown: no second POST (fal_client would resend)."""
    simulator.set_faults(FaultConfig(submit=RouteFaults(**{fault: 1.0}, max_count=1)))
    with pytest.raises(SubmitOutcomeUnknown):
        await post_once(session, ENDPOINT_ID, arguments)
    assert simulator.counters()["calls"]["submit"] == 1


async def test_refused_connection_is_retried_then_rejected() -> None:
    """Nothing listening: the POST never left, so it is retried, then the job is rejected (not unknown)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    session = BackendSession(Backend.simulator, f"http://127.0.0.1:{port}", KEY, fal_client.AsyncClient(key=KEY))
    with pytest.raises(SubmitRejected, match="cannot connect"):
        await post_once(session, ENDPOINT_ID, {"prompt": "p", "video_url": "u"}, max_retries=1)


async def test_submit_job_marks_unknown_outcomes_for_settlement(
    simulator, session: BackendSession, arguments: dict
) -> None:
    """submit_job turns an unknown outcome into error_stage submit-unknown, never a silent retry."""
    simulator.set_faults(FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    record = JobRecord(job_id="j", row=3, prompt="Edit @Video1", video="v.mp4", video_url=arguments["video_url"])
    failed = await submit_job(record, session, ENDPOINT_ID)
    assert failed.error_stage == "submit-unknown"
    assert "row 3 (j)" in failed.error and "not resent" in failed.error
    assert KEY not in failed.error
    assert edit_arguments(record)["keep_audio"] is True
