"""media_plan / media_ffmpeg: the least-work decision and the command it becomes, from probes alone."""

from __future__ import annotations

import pytest

from klingflow.endpoint import MAX_VIDEO_BYTES
from klingflow.errors import MediaError
from klingflow.media.ffmpeg import ffmpeg_args
from klingflow.media.plan import AspectPolicy, PlanOptions, fit_size, plan_video, video_budget_kbps
from klingflow.media.probe import VideoProbe
from klingflow.models import TooLongPolicy

BASE = {
    "path": "/in/clip.mp4",
    "size_bytes": 5_000_000,
    "container": "mov,mp4,m4a,3gp,3g2,mj2",
    "duration_s": 5.0,
    "video_codec": "h264",
    "pix_fmt": "yuv420p",
    "coded_width": 1920,
    "coded_height": 1080,
    "rotation": 0,
    "width": 1920,
    "height": 1080,
    "fps": 30.0,
    "base_fps": 30.0,
    "is_vfr": False,
    "bit_depth": 8,
    "color_transfer": 1,
    "color_primaries": 1,
    "is_hdr": False,
    "has_audio": True,
    "audio_codec": "aac",
}


def probe(**changes: object) -> VideoProbe:
    return VideoProbe(**{**BASE, **changes})


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((1920, 1080), (1920, 1080)),
        ((3840, 2160), (2160, 1216)),
        ((2160, 3840), (1216, 2160)),
        ((640, 480), (960, 720)),
        ((1279, 721), (1280, 720)),
        ((2160, 720), (2160, 720)),
        ((2400, 600), None),
        ((100, 100), (720, 720)),
    ],
)
def test_fit_size(size: tuple[int, int], fitted: tuple[int, int] | None) -> None:
    """Both sides land in 720..2160, even, aspect kept; beyond 3:1 there is no fit."""
    assert fit_size(*size) == fitted


@pytest.mark.parametrize(
    ("changes", "mode", "actions"),
    [
        ({}, "passthrough", ["passthrough"]),
        ({"path": "/in/clip.MOV"}, "passthrough", ["passthrough"]),
        ({"fps": 23.976, "base_fps": 23.976}, "passthrough", ["passthrough"]),
        ({"path": "/in/clip.m4v"}, "remux", ["remux"]),
        ({"container": "matroska,webm", "path": "/in/a.mkv"}, "remux", ["remux"]),
        ({"audio_codec": "opus"}, "remux", ["remux", "audio_transcode"]),
        ({"duration_s": 30.0}, "transcode", ["transcode", "trim", "audio_transcode"]),
        ({"video_codec": "hevc"}, "transcode", ["transcode"]),
        ({"rotation": -90, "width": 1080, "height": 1920}, "transcode", ["transcode", "rotate"]),
        ({"fps": 120.0, "base_fps": 120.0}, "transcode", ["transcode", "fps"]),
        ({"size_bytes": 300_000_000}, "transcode", ["transcode", "bitrate_cap"]),
        (
            {"color_primaries": 9, "pix_fmt": "yuv420p10le", "bit_depth": 10},
            "transcode",
            ["transcode", "pix_fmt", "color:bt2020/bt709/bt709/tv->bt709/bt709/bt709/tv"],
        ),
    ],
)
def test_least_work_decision(changes: dict, mode: str, actions: list[str]) -> None:
    """Passthrough when compliant, stream copy when only the wrapper is wrong, re-encode otherwise."""
    plan = plan_video(probe(**changes), PlanOptions())
    assert (plan.mode, plan.actions) == (mode, actions)


def test_trim_is_a_frame_accurate_reencode_at_the_limit() -> None:
    """A cut re-encodes (a stream copy cuts at packets) exactly at 10 s, the audio with it."""
    plan = plan_video(probe(duration_s=14.0), PlanOptions())
    assert (plan.mode, plan.trim_s, plan.duration_s, plan.audio) == ("transcode", 10.0, 10.0, "aac")


def test_over_limit_file_that_fits_after_trim_has_no_bitrate_cap() -> None:
    """250 MB over 20 s is 125 MB once cut to 10 s: the cut re-encode needs no extra rate cap action."""
    plan = plan_video(probe(duration_s=20.0, size_bytes=250_000_000), PlanOptions())
    assert plan.mode == "transcode" and "bitrate_cap" not in plan.actions


def test_rejections_carry_the_policy_to_change() -> None:
    """Reject policies raise MediaError naming the policy switch, as the CLI flag and as the parameter."""
    with pytest.raises(MediaError, match=r"too_long=reject.*`--too-long trim`.*too_long=trim"):
        plan_video(probe(duration_s=11.0), PlanOptions(too_long=TooLongPolicy.reject))
    with pytest.raises(MediaError, match="`--too-short pad`"):
        plan_video(probe(duration_s=2.0), PlanOptions())
    with pytest.raises(MediaError, match=r"extreme_aspect=reject.*`--extreme-aspect pad`"):
        plan_video(probe(width=3000, height=720), PlanOptions())
    plan = plan_video(probe(width=3000, height=720), PlanOptions(extreme_aspect=AspectPolicy.pad))
    assert (plan.scale, plan.box) == ((2160, 518), (2160, 720))


def test_budget_fits_200mb_with_margin() -> None:
    """At 10 s with audio the video gets ~143.8 Mb/s: 90 % of 200 MB minus 192 kb/s audio."""
    kbps = video_budget_kbps(10.0, True, PlanOptions())
    assert (kbps + 192) * 1000 * 10 / 8 <= 0.9 * MAX_VIDEO_BYTES
    assert kbps == 143_808


def test_ffmpeg_command_for_hdr_rotated_long_clip() -> None:
    """One pass: tonemap via zscale, scale, CFR, x264 yuv420p with a rate cap, AAC, cut, faststart mp4."""
    p = probe(
        video_codec="hevc",
        pix_fmt="yuv420p10le",
        bit_depth=10,
        color_transfer=16,
        color_primaries=9,
        is_hdr=True,
        duration_s=12.0,
        width=2160,
        height=3840,
        rotation=90,
        is_vfr=True,
        fps=29.5,
    )
    plan = plan_video(p, PlanOptions())
    assert plan.actions == [
        "transcode",
        "trim",
        "scale",
        "rotate",
        "cfr",
        "tonemap",
        "tonemap_peak:1000 cd/m2 (assumed)",
        "color:bt2020/smpte2084/bt709/tv->bt709/bt709/bt709/tv",
        "audio_transcode",  # cut exactly at 10 s, not at an AAC packet boundary
    ]
    args = ffmpeg_args("in.mov", "out.mp4", plan, crf=18, preset="medium", audio_kbps=192)
    vf = args[args.index("-vf") + 1]
    assert vf.startswith("zscale=pin=bt2020:tin=smpte2084") and "tonemap=tonemap=reinhard" in vf and "peak=15" in vf
    assert "fps=30,scale=1216:2160" in vf and vf.endswith(
        "format=yuv420p,setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,setsar=1"
    )
    joined = " ".join(args)
    assert (
        "-c:v libx264" in joined
        and "-pix_fmt yuv420p" in joined
        and "-color_trc bt709" in joined
        and "-color_range tv" in joined
    )
    assert "-c:a aac" in joined and "-t 10" in joined and "-movflags +faststart -f mp4 out.mp4" in joined
