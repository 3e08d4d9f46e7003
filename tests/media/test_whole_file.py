"""Passthrough is judged on the whole file: every stream's length, the start, and a full decode."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from klingflow.media.plan import PlanOptions, plan_video
from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.media.probe import probe_video
from klingflow.models import JobRecord
from tests.corpus import Corpus, corpus_fixture  # noqa: F401  (session fixture `corpus`)
from tests.media.test_plan import probe


def _run(path: Path, tmp_path: Path) -> JobRecord:
    record = JobRecord(job_id="w1", row=4, prompt="Make it snow in @Video1", video=str(path))
    return preprocess_job(record, PreprocessSettings(work_dir=str(tmp_path / "w"), x264_preset="ultrafast"))


def streams(path: str | Path) -> dict[str, tuple[float, float, int]]:
    """Per stream type: (first pts in s, end in s, frames or samples), read from the packets."""
    out = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            pts = [(p.pts, p.duration or 0) for p in container.demux(stream) if p.pts is not None]
            container.seek(0)
            start = min(p for p, _ in pts) * stream.time_base
            end = max(p + d for p, d in pts) * stream.time_base
            out[stream.type] = (float(start), float(end), len(pts))
    return out


@pytest.mark.parametrize(
    ("changes", "actions"),
    [
        ({"start_s": 2.0}, ["transcode", "start_at_zero", "audio_transcode"]),
        ({"start_s": 0.021}, ["passthrough"]),  # AAC priming-size offsets are not a lead-in
        ({"duration_s": 10.0, "audio_duration_s": 10.3}, ["transcode", "cut_to_video", "audio_transcode"]),
        ({"duration_s": 9.0, "container_duration_s": 10.4}, ["transcode", "cut_to_video", "audio_transcode"]),
        ({"duration_s": 10.0, "audio_duration_s": 10.04}, ["passthrough"]),
    ],
)
def test_whole_file_decides_passthrough(changes: dict, actions: list[str]) -> None:
    """A lead-in or a stream longer than the limit (beside a video within it) is not passed through."""
    plan = plan_video(probe(**changes), PlanOptions())
    assert plan.actions == actions
    if "cut_to_video" in actions:
        assert plan.trim_s == changes["duration_s"]


@pytest.mark.parametrize(("earliest", "retimed"), [(1.98, True), (0.0, False)])
def test_lead_in_is_retimed_only_when_streams_start_together(earliest: float, retimed: bool) -> None:
    """Both streams from 2 s: each re-timed to 0. Audio from 0, video from 2 s: the offset is content (sync kept)."""
    plan = plan_video(probe(start_s=2.0, earliest_start_s=earliest), PlanOptions())
    assert "start_at_zero" in plan.actions and (plan.start_s is not None) == retimed


def test_edit_listed_late_start_is_sent_from_zero(corpus: Corpus, tmp_path: Path) -> None:
    """First pts at 2.0 s (an empty edit): the output starts at 0 and lasts what the frames last, not 2 s more."""
    src = corpus["late_start.mp4"]
    assert probe_video(src).start_s == pytest.approx(2.0)
    record = _run(src, tmp_path)
    assert record.status == "pending", record.error
    assert "start_at_zero" in record.preprocess_actions
    out = probe_video(record.input_path)
    assert out.start_s <= 0.03 and out.duration_s == pytest.approx(3.5, abs=0.05)
    assert out.container_duration_s == pytest.approx(3.5, abs=0.05)
    assert streams(record.input_path)["video"][2] == streams(src)["video"][2]  # every frame kept


def test_audio_longer_than_the_limit_is_cut_to_the_video(corpus: Corpus, tmp_path: Path) -> None:
    """Video 10.0 s, audio 10.3 s: every stream and the container end within the limit; no frame lost."""
    src = corpus["audio_longer.mp4"]
    record = _run(src, tmp_path)
    assert record.status == "pending", record.error
    assert "cut_to_video" in record.preprocess_actions
    out = probe_video(record.input_path)
    per_stream = streams(record.input_path)
    assert per_stream["video"][2] == 240
    assert per_stream["audio"][1] <= 10.0 + 1 / 24 and per_stream["video"][1] == pytest.approx(10.0, abs=0.01)
    assert out.container_duration_s <= 10.05 and out.audio_duration_s <= 10.05


def test_corrupt_media_data_is_not_sent(corpus: Corpus, tmp_path: Path) -> None:
    """An mp4 whose index is intact but whose mdat is damaged fails, naming the corruption (it was sent)."""
    src = corpus["broken_corrupt_mdat.mp4"]
    probe_video(src)  # probes fine: only a full decode shows it
    record = _run(src, tmp_path)
    assert record.status == "failed" and record.input_path is None
    assert str(src) in record.error and "the file is corrupt (decoding it fails: [" in record.error


def test_compliant_file_decodes_clean_and_passes_through(corpus: Corpus, tmp_path: Path) -> None:
    """The decode check does not stop a clean file: still passed through untouched."""
    record = _run(corpus["compliant"], tmp_path)
    assert record.preprocess_actions == ["passthrough"] and record.input_path == str(corpus["compliant"])
