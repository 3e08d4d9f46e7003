"""Decide what an input video needs to satisfy the endpoint, from its probe alone (pure, no I/O).

The decision is "least work": pass the original through when it already complies, stream-copy into
an .mp4 (remux) when only the container or the audio codec is wrong, and re-encode when the picture
must change (codec, pixel format, colour, HDR, rotation, size, frame rate, bytes) or the timing does
(a cut, which must be frame-accurate, or a lead-in). Rejections raise MediaError with a plain reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from klingflow.endpoint import (
    DURATION_TOLERANCE_S,
    MAX_DURATION_S,
    MAX_FPS,
    MAX_SIDE_PX,
    MAX_VIDEO_BYTES,
    MIN_DURATION_S,
    MIN_FPS,
    MIN_SIDE_PX,
    VIDEO_EXTENSIONS,
    duration_in_limits,
    fps_in_limits,
    size_in_limits,
)
from klingflow.errors import MediaError
from klingflow.media.probe import VideoProbe
from klingflow.models import AspectPolicy, TooLongPolicy, TooShortPolicy

# The pixel format a passthrough H.264 stream may have: 8-bit 4:2:0, limited range (yuvj420p is full range).
PASSTHROUGH_PIX_FMTS = frozenset({"yuv420p"})
# Audio codecs the mp4 muxer takes and every decoder plays; anything else is re-encoded to AAC.
COPYABLE_AUDIO = frozenset({"aac", "mp3"})

# --- colour ------------------------------------------------------------------------------------
# FFmpeg's enum numbers (AVColorPrimaries, AVColorTransferCharacteristic, AVColorSpace) -> the names that
# zscale and ffmpeg's -color_* options both take. Numbers not listed (unspecified, reserved, exotic)
# count as untagged and are guessed like FFmpeg and players do: by picture size.
PRIMARIES = {
    1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film", 9: "bt2020",
    10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "jedec-p22",
}  # fmt: skip
TRANSFERS = {
    1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "linear", 11: "iec61966-2-4",
    13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67",
}  # fmt: skip
MATRICES = {1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc", 10: "bt2020c"}
# Transfers with BT.709's curve (BT.601, BT.2020 at 10/12 bits are the same function): no re-encoding of values.
TRANSFERS_LIKE_709 = frozenset({"bt709", "smpte170m", "bt2020-10", "bt2020-12"})
# Pixel formats that hold RGB (or a palette of RGB): no matrix, full range, BT.709 primaries unless tagged.
# An untagged RGB source's R'G'B' values are kept as BT.709's (sRGB shares the primaries; encoders and
# players treat its curve as BT.709's), so only the matrix and the range are applied.
RGB_PIX_FMT_PREFIXES = ("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr", "pal8", "x2rgb", "x2bgr")


class Colour(BaseModel):
    """A colour description in FFmpeg/zscale names; matrix "gbr" means RGB samples."""

    primaries: str
    transfer: str
    matrix: str
    range: Literal["tv", "pc"]

    def __str__(self) -> str:
        return f"{self.primaries}/{self.transfer}/{self.matrix}/{self.range}"


# The contract of every re-encode: BT.709 primaries, transfer and matrix, limited range.
BT709 = Colour(primaries="bt709", transfer="bt709", matrix="bt709", range="tv")


def is_rgb(pix_fmt: str | None) -> bool:
    return bool(pix_fmt) and pix_fmt.startswith(RGB_PIX_FMT_PREFIXES)


def _is_hd(probe: VideoProbe) -> bool:
    """The usual guess for untagged video: HD sizes are BT.709, smaller ones BT.601."""
    return probe.coded_width >= 1280 or probe.coded_height >= 720


def source_colour(probe: VideoProbe) -> Colour:
    """What the source's samples mean: its tags, and the usual guesses for what is untagged."""
    primaries = PRIMARIES.get(probe.color_primaries or 0)
    transfer = TRANSFERS.get(probe.color_transfer or 0)
    if is_rgb(probe.pix_fmt):  # GIF, PNG, RGB codecs
        return Colour(primaries=primaries or "bt709", transfer=transfer or "bt709", matrix="gbr", range="pc")
    matrix = MATRICES.get(probe.color_space or 0)
    full = (probe.pix_fmt or "").startswith("yuvj") or probe.color_range == 2
    if _is_hd(probe):
        guess = BT709
    else:  # SD: BT.601, 625-line (576) with EBU primaries, else 525-line SMPTE-C
        pal = probe.coded_height in (288, 576)
        sd_primaries = "bt470bg" if pal else "smpte170m"
        guess = Colour(primaries=sd_primaries, transfer="smpte170m", matrix="smpte170m", range="tv")
    return Colour(
        primaries=primaries or guess.primaries,
        transfer=transfer or guess.transfer,
        matrix=matrix or guess.matrix,
        range="pc" if full else "tv",
    )


def needs_colour_conversion(colour: Colour) -> bool:
    """Whether the samples must change (not just their tags) to mean BT.709 limited range."""
    return (
        colour.primaries != BT709.primaries
        or colour.matrix != BT709.matrix
        or colour.range != BT709.range
        or colour.transfer not in TRANSFERS_LIKE_709
    )


# A stream starting later than this (an edit list's empty edit, a lead-in) is not passed through.
START_TOLERANCE_S = 0.05
# Peak assumed when an HDR probe carries none (a probe from before peaks were measured): PQ 1000, HLG 1000.
HDR_DEFAULT_PEAK_NITS = {16: 1000.0, 18: 1000.0}


class PlanOptions(BaseModel):
    """The knobs that change a plan (a subset of PreprocessSettings plus the job's keep_audio)."""

    too_long: TooLongPolicy = TooLongPolicy.trim
    too_short: TooShortPolicy = TooShortPolicy.reject
    extreme_aspect: AspectPolicy = AspectPolicy.reject
    keep_audio: bool = True
    strip_unwanted_audio: bool = False
    passthrough_codecs: tuple[str, ...] = ("h264",)
    max_video_bytes: int = MAX_VIDEO_BYTES
    size_margin: float = 0.9
    audio_bitrate_kbps: int = 192


class Plan(BaseModel):
    """What to do with one video. Sizes are displayed sizes (after rotation)."""

    mode: Literal["passthrough", "remux", "transcode"]
    actions: list[str]
    width: int
    height: int
    duration_s: float  # expected output duration
    trim_s: float | None = None  # cut at this time
    start_s: float | None = None  # begin at this source time (a lead-in's end: the first frame), landing at 0
    freeze_to_s: float | None = None  # freeze the last frame until this time
    fps: float | None = None  # constant output rate; None keeps the source's
    scale: tuple[int, int] | None = None  # picture size before any bars
    box: tuple[int, int] | None = None  # frame size with bars (aspect pad)
    tonemap: bool = False
    colour_in: Colour | None = None  # convert from this description to BT709 (None: the samples already are)
    tonemap_peak_nits: float | None = None  # HDR: the source peak the tone curve rolls off to
    audio: Literal["copy", "aac", "none"] = "copy"
    video_max_kbps: int | None = None


def _even(value: float) -> int:
    return min(max(round(value / 2) * 2, MIN_SIDE_PX), MAX_SIDE_PX)


def fit_size(width: int, height: int) -> tuple[int, int] | None:
    """Even displayed size with both sides in 720..2160 and the same aspect, or None if impossible."""
    short, long = min(width, height), max(width, height)
    if long * MIN_SIDE_PX > short * MAX_SIDE_PX + 1e-9:
        return None
    factor = MIN_SIDE_PX / short if short < MIN_SIDE_PX else MAX_SIDE_PX / long if long > MAX_SIDE_PX else 1.0
    return _even(width * factor), _even(height * factor)


def letterbox(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """For an aspect beyond 3:1: the scaled picture and the 720-min box it is centred in."""
    long = max(width, height)
    factor = MAX_SIDE_PX / long if long > MAX_SIDE_PX else MIN_SIDE_PX / long if long < MIN_SIDE_PX else 1.0
    pic_w = max(2, int(width * factor) // 2 * 2)
    pic_h = max(2, int(height * factor) // 2 * 2)
    return (pic_w, pic_h), (max(pic_w, MIN_SIDE_PX), max(pic_h, MIN_SIDE_PX))


def target_fps(probe: VideoProbe) -> float | None:
    """The constant rate to convert to, or None when the source's rate is fine as it is."""
    fps = probe.fps or probe.base_fps
    if not probe.is_vfr and fps_in_limits(fps):
        return None
    return float(min(max(round(fps), MIN_FPS), MAX_FPS))


def streams_end_s(probe: VideoProbe) -> float:
    """How long the file is as a whole: the longest of the video, the audio and the container."""
    return max(probe.duration_s, probe.audio_duration_s or 0.0, probe.container_duration_s or 0.0)


def _duration_plan(probe: VideoProbe, opts: PlanOptions) -> tuple[float, float | None, float | None, list[str]]:
    """(output duration, trim_s, freeze_to_s, actions), or MediaError under a reject policy."""
    dur = probe.duration_s
    if duration_in_limits(dur):
        if streams_end_s(probe) > MAX_DURATION_S + DURATION_TOLERANCE_S:  # e.g. audio 10.3 s beside 10 s of video
            return dur, dur, None, ["cut_to_video"]
        return dur, None, None, []
    if dur > MAX_DURATION_S:
        if opts.too_long is TooLongPolicy.reject:
            raise MediaError(
                f"clip is {dur:.2f} s; the endpoint takes {MIN_DURATION_S:g}-{MAX_DURATION_S:g} s "
                "(too_long=reject; to cut it at 10 s use `--too-long trim`, or the parameter too_long=trim)"
            )
        return MAX_DURATION_S, MAX_DURATION_S, None, ["trim"]
    if opts.too_short is TooShortPolicy.reject:
        raise MediaError(
            f"clip is {dur:.2f} s; the endpoint takes {MIN_DURATION_S:g}-{MAX_DURATION_S:g} s "
            "(too_short=reject; to freeze its last frame up to 3 s use `--too-short pad`, or the parameter "
            "too_short=pad)"
        )
    return MIN_DURATION_S, None, MIN_DURATION_S, ["freeze_pad"]


def _size_plan(probe: VideoProbe, opts: PlanOptions) -> tuple[tuple[int, int] | None, tuple[int, int] | None, list]:
    """(scale, box, actions) for the displayed size."""
    w, h = probe.width, probe.height
    fitted = fit_size(w, h)
    if fitted is None:
        if opts.extreme_aspect is AspectPolicy.reject:
            raise MediaError(
                f"aspect ratio {w}x{h} is beyond 3:1, so both sides cannot be {MIN_SIDE_PX}-{MAX_SIDE_PX} px "
                "(extreme_aspect=reject; to add black bars use `--extreme-aspect pad`, or the parameter "
                "extreme_aspect=pad)"
            )
        pic, box = letterbox(w, h)
        return pic, box, ["scale", "pad"] if pic != (w, h) else ["pad"]
    if fitted == (w, h):
        return None, None, []
    odd_only = size_in_limits(w, h)
    return fitted, None, ["even_dims"] if odd_only else ["scale"]


def _picture_ok(probe: VideoProbe, opts: PlanOptions) -> bool:
    """Whether the coded picture can be stream-copied (timing and size are judged by their own plans)."""
    return (
        probe.video_codec in opts.passthrough_codecs
        and probe.pix_fmt in PASSTHROUGH_PIX_FMTS  # 8-bit 4:2:0 limited range only
        and not probe.is_hdr
        and not needs_colour_conversion(source_colour(probe))  # BT.709 or untagged HD
        and probe.rotation % 360 == 0
    )


def _container_ok(probe: VideoProbe) -> bool:
    return probe.is_mp4_family and Path(probe.path).suffix.lower() in VIDEO_EXTENSIONS


def video_budget_kbps(duration_s: float, has_audio: bool, opts: PlanOptions) -> int:
    """Video bitrate that keeps the output under the byte cap with margin (audio and muxing deducted)."""
    budget_bits = opts.max_video_bytes * opts.size_margin * 8
    audio = opts.audio_bitrate_kbps * 1000 if has_audio else 0
    return max(100, int((budget_bits / max(duration_s, 0.1) - audio) / 1000))


def _audio_mode(probe: VideoProbe, opts: PlanOptions, *, reencoding: bool) -> tuple[str, list[str]]:
    if not probe.has_audio:
        return "none", []
    if not opts.keep_audio and (reencoding or opts.strip_unwanted_audio):
        return "none", ["drop_audio"]
    return ("copy", []) if probe.audio_codec in COPYABLE_AUDIO else ("aac", ["audio_transcode"])


def plan_video(probe: VideoProbe, opts: PlanOptions, *, force_transcode: bool = False) -> Plan:
    """The least work that makes this video acceptable, or MediaError saying why it cannot be.

    `force_transcode` is the fallback when a stream copy turned out unusable (e.g. still too big).
    """
    duration, trim_s, freeze_to_s, dur_actions = _duration_plan(probe, opts)
    scale, box, size_actions = _size_plan(probe, opts)
    fps = target_fps(probe)
    over_bytes = probe.size_bytes * (duration / max(probe.duration_s, 0.001)) > opts.max_video_bytes
    width, height = box or scale or (probe.width, probe.height)
    video_ok = _picture_ok(probe, opts) and fps is None and not size_actions and not force_transcode
    lead_in = probe.start_s > START_TOLERANCE_S  # re-encoded from the first frame, which lands at 0

    # Any cut re-encodes: a stream copy cuts at packets (B-frame reordering kept 242 frames past -t 10, and
    # cutting 3 frames early left an 83 ms gap and audio 108 ms short); a re-encode keeps exactly the frames
    # inside the window and cuts the audio with them.
    if video_ok and not freeze_to_s and not over_bytes and not lead_in and not trim_s:
        audio, audio_actions = _audio_mode(probe, opts, reencoding=False)
        if _container_ok(probe) and not dur_actions and not audio_actions:
            return Plan(mode="passthrough", actions=["passthrough"], width=width, height=height, duration_s=duration)
        actions = ["remux", *audio_actions]
        return Plan(mode="remux", actions=actions, width=width, height=height, duration_s=duration, audio=audio)

    audio, audio_actions = _audio_mode(probe, opts, reencoding=True)
    if (freeze_to_s or trim_s or lead_in) and audio == "copy":  # padded or cut exactly, not at a packet boundary
        audio, audio_actions = "aac", [*audio_actions, "audio_transcode"]
    actions = ["transcode", *(["start_at_zero"] if lead_in else []), *dur_actions, *size_actions]
    if probe.rotation % 360:
        actions.append("rotate")
    if fps is not None:
        actions.append("cfr" if probe.is_vfr else "fps")
    colour = source_colour(probe)
    convert = probe.is_hdr or needs_colour_conversion(colour)
    peak = None
    if probe.is_hdr:
        peak = probe.hdr_peak_nits or HDR_DEFAULT_PEAK_NITS[probe.color_transfer or 16]
        how = probe.hdr_peak_source if probe.hdr_peak_nits else "assumed"
        actions += ["tonemap", f"tonemap_peak:{peak:g} cd/m2 ({how})"]
    elif probe.pix_fmt not in PASSTHROUGH_PIX_FMTS:
        actions.append("pix_fmt")
    if convert:
        actions.append(f"color:{colour}->{BT709}")
    max_kbps = video_budget_kbps(duration, audio != "none", opts)
    source_kbps = probe.size_bytes * 8 / max(probe.duration_s, 0.001) / 1000
    if over_bytes or source_kbps > max_kbps:
        actions.append("bitrate_cap")
    return Plan(
        mode="transcode",
        actions=[*actions, *audio_actions],
        width=width,
        height=height,
        duration_s=duration,
        trim_s=trim_s,
        # Streams that start together are each re-timed to 0; when one starts later than another (audio from 0,
        # video from 2 s), ffmpeg keeps their offset (CFR repeats the first frame) so that sync is kept.
        start_s=probe.start_s if lead_in and probe.start_s - probe.earliest_start_s <= START_TOLERANCE_S else None,
        freeze_to_s=freeze_to_s,
        fps=fps,
        scale=scale,
        box=box,
        tonemap=probe.is_hdr,
        colour_in=colour if convert else None,
        tonemap_peak_nits=peak,
        audio=audio,
        video_max_kbps=max_kbps,
    )


def endpoint_problems(probe: VideoProbe, *, max_bytes: int = MAX_VIDEO_BYTES) -> list[str]:
    """Why a finished output would still be refused by the endpoint, or exceeds `max_bytes` (empty when fine)."""
    problems = []
    fps = probe.fps or probe.base_fps
    if not probe.is_mp4_family:
        problems.append(f"container {probe.container}")
    if not duration_in_limits(probe.duration_s):
        problems.append(f"duration {probe.duration_s:.2f} s")
    if not size_in_limits(probe.width, probe.height):
        problems.append(f"size {probe.width}x{probe.height}")
    if probe.size_bytes > max_bytes:
        problems.append(f"{probe.size_bytes} bytes > {max_bytes}")
    if not fps_in_limits(fps):
        problems.append(f"{fps:.2f} fps")
    return problems
