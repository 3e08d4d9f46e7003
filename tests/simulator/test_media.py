"""The simulated model's output: a real, decodable, visibly edited mp4 of the input's duration."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import fal_client
import httpx
import numpy as np
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.media.probe import probe_video
from klingflow.simulator import Simulator
from klingflow.simulator.media import EditCancelled, Grade, edit_video
from tests.simulator.conftest import edit_args


def _fetch(url: str, dst: Path) -> Path:
    dst.write_bytes(httpx.get(url).content)
    return dst


def _frame(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24").astype(np.float32)
    raise AssertionError("frame not found")


def test_output_decodes_with_input_duration_and_audio(
    sim: Simulator, client: fal_client.SyncClient, media, tmp_path: Path
):
    """The result is H.264 + AAC mp4, same duration as the input, audio kept by default."""
    url = client.upload_file(media.clip)
    result = client.subscribe(ENDPOINT_ID, edit_args(url))
    out = _fetch(result["video"]["url"], tmp_path / "out.mp4")
    probe, source = probe_video(out), probe_video(media.clip)
    assert probe.is_mp4_family and probe.video_codec == "h264" and probe.pix_fmt == "yuv420p"
    assert probe.audio_codec == "aac"
    assert abs(probe.duration_s - source.duration_s) < 0.1
    assert (probe.width, probe.height) == (source.width, source.height)
    assert result["video"]["file_size"] == out.stat().st_size


def test_keep_audio_false_drops_audio(sim: Simulator, client: fal_client.SyncClient, media, tmp_path: Path):
    """keep_audio=false yields a video-only output."""
    url = client.upload_file(media.clip)
    result = client.subscribe(ENDPOINT_ID, edit_args(url, keep_audio=False))
    assert not probe_video(_fetch(result["video"]["url"], tmp_path / "out.mp4")).has_audio


def test_edit_is_visible(sim: Simulator, client: fal_client.SyncClient, media, tmp_path: Path):
    """The same frame differs clearly from the input (tint, mirror, bands)."""
    result = client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.clip)))
    out = _fetch(result["video"]["url"], tmp_path / "out.mp4")
    before, after = _frame(media.clip, 36), _frame(out, 36)
    assert np.abs(before - after).mean() > 30
    assert np.abs(before.mean(axis=(0, 1)) - after.mean(axis=(0, 1))).max() > 15


def test_grade_is_deterministic_per_prompt():
    """The same prompt gives the same look; different prompts differ."""
    frame = np.full((72, 128, 3), 128, np.uint8)
    assert np.array_equal(Grade("snow").apply(frame), Grade("snow").apply(frame))
    assert not np.array_equal(Grade("snow").apply(frame), Grade("desert").apply(frame))


def test_fast_copy_remuxes_input(make_sim, client: fal_client.SyncClient, media, tmp_path: Path):
    """fast_copy outputs the input's frames unchanged (stream copy) with the same duration."""
    make_sim(fast_copy=True)
    result = client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.clip)))
    out = _fetch(result["video"]["url"], tmp_path / "out.mp4")
    assert np.array_equal(_frame(media.clip, 10), _frame(out, 10))
    assert abs(probe_video(out).duration_s - probe_video(media.clip).duration_s) < 0.1


def test_edit_stops_when_cancelled(media, tmp_path: Path):
    """A set cancel event stops the edit and raises instead of writing a full output."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EditCancelled):
        edit_video(media.clip, tmp_path / "x.mp4", prompt="p", keep_audio=True, progress=lambda *_: None, cancel=cancel)
