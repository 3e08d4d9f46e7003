"""synth: the generated clips are what their parameters say."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from klingflow.media.probe import probe_video
from klingflow.media.synth import make_audio_only, make_clip, make_image


def test_make_clip_defaults_are_a_compliant_clip(tmp_path: Path) -> None:
    """The default clip is 3 s 1280x720 24 fps H.264/AAC (backward compatible call)."""
    p = probe_video(make_clip(tmp_path / "a.mp4"))
    assert (p.width, p.height, p.video_codec, p.audio_codec) == (1280, 720, "h264", "aac")
    assert p.duration_s == pytest.approx(3.0) and p.fps == pytest.approx(24.0)


def test_make_clip_colour_tags_and_vfr(tmp_path: Path) -> None:
    """Colour tags land on the stream; vfr=True yields average rate below the base rate."""
    hdr = probe_video(
        make_clip(
            tmp_path / "h.mp4",
            seconds=1,
            width=320,
            height=240,
            codec="libx265",
            pix_fmt="yuv420p10le",
            color_trc=18,
            color_primaries=9,
            audio=False,
        )
    )
    assert (hdr.color_transfer, hdr.color_primaries, hdr.is_hdr) == (18, 9, True)
    vfr = probe_video(make_clip(tmp_path / "v.mp4", seconds=2, width=320, height=240, fps=30, vfr=True))
    assert vfr.is_vfr and vfr.duration_s == pytest.approx(2.0, abs=0.1)


def test_make_audio_only_and_image(tmp_path: Path) -> None:
    """An audio-only mp4 has no video stream; make_image writes the format of its extension."""
    import av

    with av.open(str(make_audio_only(tmp_path / "a.mp4", seconds=1))) as c:
        assert not c.streams.video and c.streams.audio
    with Image.open(make_image(tmp_path / "i.png", width=400, height=300)) as img:
        assert (img.format, img.size) == ("PNG", (400, 300))
