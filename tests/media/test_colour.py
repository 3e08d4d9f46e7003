"""The colour contract: every re-encode is BT.709 primaries/transfer/matrix, limited range, tagged in the stream
and the container, with the source's colours converted (not relabelled). Bars are compared with CIEDE2000."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from klingflow.media.plan import BT709, Colour, PlanOptions, plan_video, source_colour
from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.media.probe import probe_video
from klingflow.models import JobRecord
from tests.media.colour import bar_errors, make_bars
from tests.media.test_plan import probe

# name -> (file name, make_bars arguments, bars the source cannot hold)
SOURCES: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "bt2020_sdr_hevc10": ("bt2020.mp4", {"space": "bt2020", "pix_fmt": "yuv420p10le", "codec": "libx265"}, ()),
    "bt601_625_sd": ("pal.mp4", {"space": "bt601-6-625", "size": (720, 576)}, ()),
    # SMPTE-C primaries are narrower than BT.709's in cyan: 100 % cyan (bar 2) is clipped by the source itself
    "smpte170m_hd": ("ntsc_hd.mp4", {"space": "smpte170m"}, (2,)),
    "smpte240m_hd": ("240m.mov", {"space": "smpte240m"}, (2,)),
    "untagged_sd": ("untagged.mp4", {"space": "smpte170m", "size": (640, 480), "tag": False}, (2,)),
    "mjpeg_full_range": (
        "webcam.avi",
        {"space": "bt601-6-625", "range_": "pc", "pix_fmt": "yuvj420p", "codec": "mjpeg", "size": (720, 576)},
        (),
    ),
    "gif_palette": ("anim.gif", {"space": None, "codec": "gif", "size": (640, 360)}, ()),
    "png_rgb_mov": ("png.mov", {"space": None, "codec": "png"}, ()),
}


@pytest.fixture(scope="module")
def bars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bars")


def _job(path: Path) -> JobRecord:
    return JobRecord(job_id="c1", row=1, prompt="Make it snow in @Video1", video=str(path))


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_description_is_converted_to_bt709_limited(bars_dir: Path, tmp_path: Path, name: str) -> None:
    """Bars in each source description, decoded as BT.709 limited after preprocessing: every bar ΔE2000 ≤ 3."""
    file_name, kwargs, unholdable = SOURCES[name]
    src = make_bars(bars_dir / file_name, **kwargs)
    record = preprocess_job(_job(src), PreprocessSettings(work_dir=str(tmp_path / "w"), x264_preset="ultrafast"))
    assert record.status == "pending", record.error
    assert any(a.startswith("color:") and a.endswith(f"->{BT709}") for a in record.preprocess_actions)
    errors = bar_errors(record.input_path)
    held = np.delete(errors, list(unholdable))
    assert held.max() <= 3.0, f"{name}: ΔE per bar {np.round(errors, 1).tolist()}"
    out = probe_video(record.input_path)
    assert (out.color_primaries, out.color_transfer, out.color_space, out.color_range) == (1, 1, 1, 1)
    assert out.pix_fmt == "yuv420p"
    assert b"colrnclx" in Path(record.input_path).read_bytes()  # tagged in the container too


def test_bt709_source_passes_through_untouched(bars_dir: Path, tmp_path: Path) -> None:
    """BT.709 limited 8-bit 4:2:0 H.264 in mp4 is the contract already: sent byte for byte."""
    src = make_bars(bars_dir / "bt709.mp4", space="bt709")
    record = preprocess_job(_job(src), PreprocessSettings(work_dir=str(tmp_path / "w")))
    assert record.preprocess_actions == ["passthrough"] and record.input_path == str(src)
    assert bar_errors(src).max() <= 1.0  # the chart and its decode agree


def test_full_range_h264_is_not_passed_through(bars_dir: Path, tmp_path: Path) -> None:
    """yuvj420p H.264 in mp4 (phones' and webcams' full range) is converted to limited range."""
    src = make_bars(bars_dir / "full.mp4", space="bt709", range_="pc", pix_fmt="yuvj420p")
    record = preprocess_job(_job(src), PreprocessSettings(work_dir=str(tmp_path / "w"), x264_preset="ultrafast"))
    assert "transcode" in record.preprocess_actions
    assert bar_errors(record.input_path).max() <= 3.0


SD = {"coded_width": 640, "coded_height": 480, "width": 640, "height": 480, "color_primaries": 2, "color_transfer": 2}


@pytest.mark.parametrize(
    ("changes", "colour"),
    [
        ({}, "bt709/bt709/bt709/tv"),
        ({"color_primaries": 2, "color_transfer": 2}, "bt709/bt709/bt709/tv"),  # untagged HD
        (SD, "smpte170m/smpte170m/smpte170m/tv"),  # untagged 480-line SD
        ({**SD, "coded_height": 576, "height": 576}, "bt470bg/smpte170m/smpte170m/tv"),  # untagged 576-line
        ({"color_primaries": 9, "color_transfer": 14, "color_space": 9}, "bt2020/bt2020-10/bt2020nc/tv"),
        ({"color_primaries": 5, "color_transfer": 6, "color_space": 5}, "bt470bg/smpte170m/bt470bg/tv"),
        ({"color_primaries": 7, "color_transfer": 7, "color_space": 7}, "smpte240m/smpte240m/smpte240m/tv"),
        ({"pix_fmt": "yuvj420p"}, "bt709/bt709/bt709/pc"),
        ({"color_range": 2}, "bt709/bt709/bt709/pc"),
        ({"pix_fmt": "pal8", "video_codec": "gif"}, "bt709/bt709/gbr/pc"),
        ({"pix_fmt": "rgb24", "video_codec": "png"}, "bt709/bt709/gbr/pc"),
    ],
)
def test_source_colour_table(changes: dict, colour: str) -> None:
    """Tags are read as they are; what is untagged is guessed by size (SD BT.601, HD BT.709), RGB is RGB."""
    assert str(source_colour(probe(**changes))) == colour


@pytest.mark.parametrize(
    ("changes", "mode", "converted"),
    [
        ({}, "passthrough", False),
        ({"color_primaries": 2, "color_transfer": 2, "color_space": 2}, "passthrough", False),
        ({"color_transfer": 6, "color_space": 1}, "passthrough", False),  # BT.601's curve is BT.709's
        ({"color_space": 5}, "transcode", True),  # BT.601 matrix on HD
        ({"color_primaries": 9, "color_transfer": 14, "color_space": 9}, "transcode", True),
        ({"pix_fmt": "yuvj420p"}, "transcode", True),
        ({"color_range": 2}, "transcode", True),
        ({"video_codec": "hevc"}, "transcode", False),  # re-encoded, values already BT.709: tagged only
    ],
)
def test_passthrough_only_for_bt709_limited(changes: dict, mode: str, converted: bool) -> None:
    """Passthrough needs BT.709 (or untagged HD) limited 8-bit 4:2:0; a conversion is planned when values change."""
    plan = plan_video(probe(**changes), PlanOptions())
    assert plan.mode == mode
    assert (plan.colour_in is not None) == converted
    if converted:
        assert isinstance(plan.colour_in, Colour) and f"color:{plan.colour_in}->{BT709}" in plan.actions
