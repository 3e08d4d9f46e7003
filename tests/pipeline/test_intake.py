"""The intake stream: each job waits for its own inputs only; a slow input is bounded by its deadline."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from klingflow.media.preprocess import PreprocessSettings
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord
from klingflow.pipeline.intake import Intake
from tests.trickle import trickling


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("intake") / "clip.mp4", seconds=3, width=1280, height=720)


def _jobs(*videos: str) -> list[JobRecord]:
    return [JobRecord(job_id=f"j{i}", row=i + 1, prompt="Edit @Video1", video=v) for i, v in enumerate(videos)]


async def test_a_trickling_input_delays_only_its_own_job_and_fails_at_its_deadline(clip: Path, tmp_path: Path) -> None:
    settings = PreprocessSettings(work_dir=str(tmp_path / "work"), download_deadline_s=2.0)
    with trickling(clip) as url:
        async with Intake(_jobs(url, str(clip), str(clip)), settings, logging.getLogger("test")) as intake:
            started = time.monotonic()
            local = await intake.ready(1)
            assert time.monotonic() - started < 1.5 and local.ok and local.input_duration_s == pytest.approx(3, 0.1)
            slow, *rest = await intake.settled(0.2)
            assert slow is None and all(r is not None and r.ok for r in rest)
            failed = await intake.ready(0)
    assert failed.status == "failed" and "not complete after 2 s" in (failed.error or ""), failed.error
    assert failed.error.startswith("row 1 (j0), file http://127.0.0.1:")


async def test_settled_without_a_wait_has_every_row(clip: Path, tmp_path: Path) -> None:
    settings = PreprocessSettings(work_dir=str(tmp_path / "work"))
    async with Intake(_jobs(str(clip), str(tmp_path / "missing.mp4")), settings, logging.getLogger("t")) as intake:
        good, missing = await intake.settled(None)
    assert good is not None and good.ok
    assert missing is not None and missing.status == "failed" and "file not found" in (missing.error or "")
