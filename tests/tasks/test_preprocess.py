"""The Prefect task wrapper: same contract as preprocess_job, inside a real task run."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.media.preprocess import PreprocessSettings
from klingflow.models import JobRecord
from tasks.preprocess import preprocess
from tests.corpus import Corpus, corpus_fixture  # noqa: F401  (session fixture `corpus`)


@pytest.mark.usefixtures("prefect_server")
def test_task_returns_updated_and_failed_records(corpus: Corpus, tmp_path: Path) -> None:
    """Run as a Prefect task: a good job is filled in, a broken one comes back failed (no exception)."""
    settings = PreprocessSettings(work_dir=str(tmp_path / "work"), x264_preset="ultrafast")
    good = JobRecord(job_id="g", row=1, prompt="@Video1", video=str(corpus["sd480"]))
    bad = JobRecord(job_id="b", row=2, prompt="@Video1", video=str(corpus["broken_text.mp4"]))
    done = preprocess(good, settings)
    assert done.status == "pending" and done.input_width == 960 and "scale" in done.preprocess_actions
    failed = preprocess(bad, settings)
    assert failed.status == "failed" and failed.error.startswith("row 2 (b), file ")
