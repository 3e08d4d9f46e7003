"""Fast media probing with PyAV: what a file is, as the endpoint would see it.

Used by preprocessing (decide passthrough / remux / transcode), by the simulator (validate inputs
like the provider) and by result verification (the output decodes and has the expected duration).
"""

from __future__ import annotations

import functools
import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pydantic import BaseModel

from klingflow.errors import MediaError
from klingflow.hashing import file_version

# FFmpeg transfer characteristics that mean HDR: 16 = SMPTE ST 2084 (PQ), 18 = ARIB STD-B67 (HLG).
HDR_TRANSFERS = frozenset({16, 18})
PQ_TRANSFER = 16


class VideoProbe(BaseModel):
    """What a video file is. Sizes are as displayed (rotation applied)."""

    path: str
    size_bytes: int
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    duration_s: float
    video_codec: str
    pix_fmt: str | None
    coded_width: int
    coded_height: int
    rotation: int  # degrees, as FFmpeg reports the display matrix (0, 90, -90, 180 ...)
    width: int  # displayed
    height: int  # displayed
    fps: float  # average frame rate
    base_fps: float  # the stream's base (r_frame_rate)
    is_vfr: bool
    bit_depth: int
    color_transfer: int | None
    color_primaries: int | None
    is_hdr: bool
    color_space: int | None = None  # the YUV matrix (FFmpeg AVColorSpace: 1 bt709, 5/6 BT.601, 9 bt2020nc ...)
    color_range: int | None = None  # FFmpeg AVColorRange: 0 unspecified, 1 tv (limited), 2 pc (full)
    hdr_peak_nits: float | None = None  # HDR only: the brightest pixel, from light-level metadata or measured
    hdr_peak_source: str | None = None  # "MaxCLL" or "measured"
    start_s: float = 0.0  # the latest first timestamp of the video and audio streams: a lead-in (empty edit)
    earliest_start_s: float = 0.0  # the earliest: streams that start together have start_s - this ≈ 0
    audio_duration_s: float | None = None
    container_duration_s: float | None = None  # the file's own duration (every stream, incl. ones not probed)
    has_audio: bool
    audio_codec: str | None

    @property
    def is_mp4_family(self) -> bool:
        """Whether the container is one of mov/mp4 (the only ones the endpoint takes)."""
        return self.container.startswith("mov") or "mp4" in self.container.split(",")


def _rate(value: Fraction | None) -> float:
    return float(value) if value else 0.0


def _bit_depth(pix_fmt: str | None) -> int:
    if pix_fmt is None:
        return 8
    for depth in (16, 14, 12, 10):
        if f"p{depth}" in pix_fmt or pix_fmt.endswith(f"{depth}le") or pix_fmt.endswith(f"{depth}be"):
            return depth
    return 8


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    raise MediaError("the file has no duration")


# SMPTE ST 2084 (PQ) constants.
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
HLG_PEAK_NITS = 1000.0  # the reference HLG display (BT.2100), as zscale assumes


def pq_to_nits(signal: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF: non-linear signal 0..1 -> cd/m²."""
    e = np.clip(signal, 0.0, 1.0) ** (1 / _PQ_M2)
    return 10000.0 * (np.maximum(e - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * e)) ** (1 / _PQ_M1)


def hlg_to_nits(signal: np.ndarray) -> np.ndarray:
    """ARIB STD-B67 inverse OETF and the BT.2100 OOTF (gamma 1.2) on a 1000 cd/m² display, per channel."""
    e = np.clip(signal, 0.0, 1.0)
    scene = np.where(e <= 0.5, e * e / 3, (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12)
    return HLG_PEAK_NITS * scene**1.2


def _max_rgb_signal(frame: av.VideoFrame) -> float:
    """The largest R', G' or B' (0..1) of a BT.2020 limited-range frame, computed from its planes."""
    yuv = frame.reformat(format="yuv444p16le").to_ndarray().astype(np.float32) / 65535.0 * 1023.0  # (h, w, 3)
    y = (yuv[..., 0] - 64) / 876  # 10-bit limited range
    cb, cr = (yuv[..., 1] - 512) / 896, (yuv[..., 2] - 512) / 896
    r = y + 1.4746 * cr
    b = y + 1.8814 * cb
    g = (y - 0.2627 * r - 0.0593 * b) / 0.6780
    return float(max(r.max(), g.max(), b.max()))


def _hdr_peak(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, trc: int, duration: float
) -> dict[str, float | str]:
    """The HDR peak to tone-map from: MaxCLL when the stream carries it, else measured on 8 frames across the clip.

    Without light-level metadata a PQ file may peak anywhere from 100 to 10,000 cd/m²; assuming a value
    either clips the highlights (too low) or darkens everything (too high), so the frames are measured.
    """
    peak = 0.0
    tb = stream.time_base
    for i in range(8):
        target = (stream.start_time or 0) + int(duration * i / 8 / tb) if tb else 0
        container.seek(target, stream=stream, backward=True)
        for frame in container.decode(stream):
            for side in frame.side_data:
                if "CONTENT_LIGHT" in str(side.type).upper():
                    max_cll = struct.unpack("=II", bytes(side)[:8])[0]
                    if max_cll > 0:
                        return {"hdr_peak_nits": float(max_cll), "hdr_peak_source": "MaxCLL"}
            peak = max(peak, _max_rgb_signal(frame))
            break
    to_nits = pq_to_nits if trc == PQ_TRANSFER else hlg_to_nits
    return {"hdr_peak_nits": round(float(to_nits(np.array(peak))), 1), "hdr_peak_source": "measured"}


def _check_complete(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, duration: float, fps: float
) -> None:
    """Raise MediaError if the packets stop before the stated duration (a cut-off download).

    A truncated file whose index survived (mp4 with `+faststart`, i.e. moov first) opens and
    decodes its first frame fine; only reading the last second of packets reveals the cut.
    """
    tb = stream.time_base
    if tb is None or duration <= 0:
        return
    start = stream.start_time or 0
    container.seek(start + max(0, int((duration - 1.0) / tb)), stream=stream, backward=True)
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            pkt_end = float((packet.pts - start + (packet.duration or 0)) * tb)
            end = pkt_end if end is None else max(end, pkt_end)
    if end is None or end < duration - 2.0 / fps - 0.02:
        got = "no packets" if end is None else f"{end:.2f} s"
        raise MediaError(f"file is truncated (video data ends at {got} of {duration:.2f} s)")


def probe_source(path: str | os.PathLike[str]) -> VideoProbe:
    """`probe_video` of an input, remembered per file version (path, size, mtime): a manifest that names
    one clip in many rows probes it once (a probe costs ~10 ms; 10,000 rows are a manifest's size)."""
    try:
        version = file_version(path)
    except OSError:
        return probe_video(path)  # says why, in the words of every other probe error
    return _probe_version(*version).model_copy(update={"path": str(path)})


@functools.lru_cache(maxsize=4096)
def _probe_version(path: str, size: int, mtime_ns: int) -> VideoProbe:  # size and mtime: the key's version
    return probe_video(path)


def probe_video(path: str | os.PathLike[str], *, check_complete: bool = True) -> VideoProbe:
    """Probe a video file, decoding only its first frame (for the rotation matrix).

    `check_complete` also demuxes (without decoding) the last second to catch truncated files.

    Raises MediaError with a plain reason for anything that is not a usable video.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError("file not found")
    if not p.is_file():
        raise MediaError("not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise MediaError("file is empty")
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                kind = "audio only" if container.streams.audio else "no video stream"
                raise MediaError(f"not a video ({kind})")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rotation = 0
            for frame in container.decode(stream):
                rotation = int(getattr(frame, "rotation", 0) or 0)
                break
            else:
                raise MediaError("no decodable video frame")
            audio = container.streams.audio[0] if container.streams.audio else None
            avg, base = _rate(stream.average_rate), _rate(stream.base_rate)
            coded_w, coded_h = ctx.width, ctx.height
            swapped = rotation % 180 != 0
            trc = getattr(ctx, "color_trc", None)
            duration = _duration(container, stream)
            starts = [float(s.start_time * s.time_base) for s in (stream, audio) if s and s.start_time is not None]
            audio_duration = float(audio.duration * audio.time_base) if audio and audio.duration else None
            if check_complete:
                _check_complete(container, stream, duration, avg or base or 24.0)
            return VideoProbe(
                path=str(p),
                size_bytes=size,
                container=container.format.name,
                duration_s=duration,
                video_codec=ctx.name,
                pix_fmt=ctx.pix_fmt,
                coded_width=coded_w,
                coded_height=coded_h,
                rotation=rotation,
                width=coded_h if swapped else coded_w,
                height=coded_w if swapped else coded_h,
                fps=avg,
                base_fps=base,
                is_vfr=bool(avg and base and abs(avg - base) / base > 0.01),
                bit_depth=_bit_depth(ctx.pix_fmt),
                color_transfer=trc,
                color_primaries=getattr(ctx, "color_primaries", None),
                is_hdr=trc in HDR_TRANSFERS,
                color_space=getattr(ctx, "colorspace", None),
                color_range=getattr(ctx, "color_range", None),
                **(_hdr_peak(container, stream, trc, duration) if trc in HDR_TRANSFERS else {}),
                has_audio=audio is not None,
                start_s=max([0.0, *starts]),
                earliest_start_s=max(0.0, min(starts, default=0.0)),
                audio_duration_s=audio_duration,
                container_duration_s=container.duration / av.time_base if container.duration else None,
                audio_codec=audio.codec_context.name if audio is not None else None,
            )
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:  # truncated, garbage, unknown format
        raise MediaError(f"not a readable video ({exc.__class__.__name__}: {exc})") from exc
