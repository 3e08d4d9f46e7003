"""probe_video: what a file is, as the endpoint sees it (displayed size, timing, colour, audio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.errors import MediaError
from klingflow.media.probe import probe_video
from tests.corpus import Corpus, corpus_fixture  # noqa: F401  (session fixture `corpus`)


def test_compliant_clip_facts(corpus: Corpus) -> None:
    """A plain H.264/AAC mp4 reports its container family, codecs, size, rate and duration."""
    p = probe_video(corpus["compliant"])
    assert p.is_mp4_family and p.container.startswith("mov,mp4")
    assert (p.video_codec, p.pix_fmt, p.bit_depth, p.audio_codec) == ("h264", "yuv420p", 8, "aac")
    assert (p.width, p.height, p.rotation) == (1280, 720, 0)
    assert p.fps == pytest.approx(24.0) and not p.is_vfr
    assert p.duration_s == pytest.approx(3.5, abs=0.01)
    assert p.size_bytes == corpus["compliant"].stat().st_size


def test_rotation_swaps_displayed_size(corpus: Corpus) -> None:
    """A 90° display matrix: coded 1280x720, displayed 720x1280."""
    p = probe_video(corpus["rotated"])
    assert (p.coded_width, p.coded_height, p.rotation, p.width, p.height) == (1280, 720, 90, 720, 1280)


def test_vfr_is_detected(corpus: Corpus) -> None:
    """Alternating frame durations: average rate below the base rate, flagged VFR."""
    p = probe_video(corpus["vfr"])
    assert p.is_vfr and p.base_fps == pytest.approx(30.0) and p.fps < 25


def test_hdr_pq_is_detected(corpus: Corpus) -> None:
    """HEVC 10-bit tagged PQ/BT.2020 is HDR; untagged 10-bit HEVC is not."""
    hdr, sdr = probe_video(corpus["hdr_pq"]), probe_video(corpus["hevc10"])
    assert (hdr.video_codec, hdr.bit_depth, hdr.color_transfer, hdr.color_primaries, hdr.is_hdr) == (
        "hevc",
        10,
        16,
        9,
        True,
    )
    assert sdr.bit_depth == 10 and not sdr.is_hdr


def test_webm_and_no_audio(corpus: Corpus) -> None:
    """VP9 WebM reports the Matroska family; a silent clip reports no audio."""
    webm, silent = probe_video(corpus["vp9_webm"]), probe_video(corpus["no_audio"])
    assert webm.container == "matroska,webm" and not webm.is_mp4_family and webm.video_codec == "vp9"
    assert not silent.has_audio and silent.audio_codec is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken_empty.mp4", "file is empty"),
        ("broken_text.mp4", "not a readable video"),
        ("broken_truncated.mp4", "not a readable video"),
        ("broken_faststart_truncated.mp4", "file is truncated"),
        ("broken_audio_only.mp4", "not a video (audio only)"),
    ],
)
def test_unusable_files_raise_media_error(corpus: Corpus, name: str, reason: str) -> None:
    """Broken inputs raise MediaError with a plain reason (never a PyAV exception)."""
    with pytest.raises(MediaError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        probe_video(corpus[name])


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing path and a directory are reported as such."""
    with pytest.raises(MediaError, match="file not found"):
        probe_video(tmp_path / "nothing.mp4")
    with pytest.raises(MediaError, match="not a regular file"):
        probe_video(tmp_path)


def test_truncation_check_can_be_skipped(corpus: Corpus) -> None:
    """check_complete=False probes a faststart-truncated file from its index alone."""
    p = probe_video(corpus["broken_faststart_truncated.mp4"], check_complete=False)
    assert p.duration_s == pytest.approx(3.5, abs=0.01)
