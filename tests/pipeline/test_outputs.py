"""Outputs: downloaded atomically, verified against the input, always inside the output dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.fal.queue import FalQueue
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord
from klingflow.pipeline.outputs import download_and_verify, output_path


async def test_a_verified_output_lands_atomically(tmp_path: Path, fal: FalQueue) -> None:
    """A good output is renamed into place with its hash and duration; no partial file remains."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await fal.upload(clip)
    record = JobRecord(
        job_id="j", row=1, prompt="p", video=str(clip), request_id="r", output_url=url, input_duration_s=3.0
    )
    done = await download_and_verify(record, fal, tmp_path / "out")
    assert done.status == "succeeded"
    assert Path(done.output_path).is_file() and Path(done.output_path).is_absolute()
    assert done.output_duration_s == pytest.approx(3.0, abs=0.1)
    assert not list((tmp_path / "out").glob(".*.part"))


async def test_a_wrong_duration_output_is_rejected_and_leaves_no_file(tmp_path: Path, fal: FalQueue) -> None:
    """Verification fails when the output's duration differs from the input's; no partial file remains."""
    clip = make_clip(tmp_path / "c.mp4", seconds=3, width=720, height=720)
    url = await fal.upload(clip)
    record = JobRecord(
        job_id="j", row=1, prompt="p", video=str(clip), request_id="r", output_url=url, input_duration_s=8.0
    )
    done = await download_and_verify(record, fal, tmp_path / "out")
    assert done.status == "failed"
    assert "lasts 3.00 s but the input lasts 8.00 s" in done.error
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("job_id", ["team/a", "../escaped", "..", "a\\b", ".hidden"])
def test_output_names_never_leave_the_output_dir(tmp_path: Path, job_id: str) -> None:
    """Whatever an id contains, the output file is a direct child of the output dir."""
    path = output_path(tmp_path / "out", job_id, "req/1")
    assert path.parent == (tmp_path / "out").resolve()
    assert path.name.endswith("-req_1.mp4")


def test_output_path_is_absolute_from_a_relative_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative output dir is stored as an absolute path (the ledger keeps paths absolute)."""
    monkeypatch.chdir(tmp_path)
    assert output_path("outputs", "j", "r") == tmp_path / "outputs" / "j-r.mp4"


@pytest.mark.e2e
async def test_an_output_paid_with_the_embedded_simulator_downloads_again_in_a_later_run(
    tmp_path: Path, prefect_server: None
) -> None:
    """The embedded simulator comes back on its port, so a paid output whose file is gone downloads again
    (it was a dead port before): reused, nothing billed twice."""
    from klingflow.media.synth import make_clip
    from klingflow.simulator.ledger import Ledger
    from tests.conftest import fast_params, run_flow

    clip = make_clip(tmp_path / "clip.mp4", seconds=3, width=720, height=720)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt,video\nonce,Embedded @Video1,{clip}\n")
    params = fast_params(tmp_path, manifest, simulator_time_scale=0.05)
    assert (await run_flow(params))[0] == "COMPLETED"
    (first,) = (tmp_path / "outputs").glob("once-*.mp4")
    expected = first.read_bytes()
    first.unlink()
    state, _ = await run_flow(params.model_copy(update={"report_dir": str(tmp_path / "r2")}))
    assert state == "COMPLETED" and first.read_bytes() == expected
    assert len(Ledger(tmp_path / "state" / "simulator" / "ledger.jsonl").entries()) == 1
