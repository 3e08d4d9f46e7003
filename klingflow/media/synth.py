"""Synthesize small clips and images with PyAV/Pillow: the demo's inputs and the tests' corpus.

Nothing binary is committed; every clip is generated on demand (a 3 s 720p clip is ~50 kB).
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw


@functools.lru_cache(maxsize=8)
def _background(width: int, height: int) -> np.ndarray:
    """The static red/green gradient, computed once per size (a 4K mgrid per frame is slow)."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)[None, :]
    img[..., 1] = (np.arange(height) * 255 // max(1, height - 1)).astype(np.uint8)[:, None]
    img.flags.writeable = False
    return img


def _frame_rgb(index: int, width: int, height: int, fps: float) -> np.ndarray:
    """A moving, colourful test pattern: gradient background, a bouncing square, a frame counter bar."""
    t = index / fps
    img = _background(width, height).copy()
    img[..., 2] = int(128 + 127 * np.sin(t))
    side = max(8, min(width, height) // 5)
    cx = int((width - side) * (0.5 + 0.5 * np.sin(2 * t)))
    cy = int((height - side) * (0.5 + 0.5 * np.cos(3 * t)))
    img[cy : cy + side, cx : cx + side] = (255, 255, 255)
    bar = max(2, height // 40)
    img[height - bar :, : int(width * ((index % int(fps or 1)) + 1) / (fps or 1))] = (0, 0, 0)
    return img


def make_clip(
    path: str | os.PathLike[str],
    *,
    seconds: float = 3.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 24,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    rotation: int = 0,
    bit_rate: int | None = None,
    container_format: str | None = None,
    vfr: bool = False,
    color_trc: int | None = None,
    color_primaries: int | None = None,
    colorspace: int | None = None,
    audio_codec: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a synthetic clip and return its path. `rotation` sets the display matrix (phone style).

    `vfr` alternates frame durations of 1 and 2 ticks of 1/fps (average ~2/3 fps, base fps);
    `color_trc`/`color_primaries`/`colorspace` tag the stream (16/9/9 = HDR10 PQ BT.2020).
    `options` go to the encoder (e.g. {"preset": "ultrafast"}); ultrafast is used for libx264 by default.
    """
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = max(1, round(seconds * fps * (2 / 3 if vfr else 1)))
    enc_options = dict(options or _DEFAULT_OPTIONS.get(codec, {}))
    with av.open(str(out_path), "w", format=container_format) as out:
        video = out.add_stream(codec, rate=fps, options=enc_options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if vfr:
            video.time_base = Fraction(1, fps)
        if bit_rate:
            video.bit_rate = bit_rate
        if rotation:
            video.set_display_rotation(rotation)
        _tag_colour(video.codec_context, color_trc, color_primaries, colorspace)
        sound = None
        if audio:
            default_audio = "libopus" if codec in ("libvpx-vp9", "libvpx") else "aac"
            sound = out.add_stream(audio_codec or default_audio, rate=48000)
            sound.layout = "stereo"
        pts = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(_frame_rgb(pts, width, height, fps), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = pts
            frame.time_base = Fraction(1, fps)
            _tag_colour(frame, color_trc, color_primaries, colorspace)
            out.mux(video.encode(frame))
            pts += (1 + i % 2) if vfr else 1
        out.mux(video.encode(None))
        if sound is not None:
            _write_tone(out, sound, seconds)
    return out_path


# Fast, quiet encoder defaults for synthetic clips (content is a test pattern; speed matters).
_DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "ultrafast"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
}


def _tag_colour(target: object, trc: int | None, primaries: int | None, space: int | None) -> None:
    for attr, value in (("color_trc", trc), ("color_primaries", primaries), ("colorspace", space)):
        if value is not None:
            setattr(target, attr, value)


def make_audio_only(path: str | os.PathLike[str], *, seconds: float = 3.0) -> Path:
    """Write an audio-only .mp4 (AAC): a file that has the right extension but no picture."""
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out_path), "w") as out:
        sound = out.add_stream("aac", rate=48000)
        sound.layout = "stereo"
        _write_tone(out, sound, seconds)
    return out_path


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    chunk = 1024
    total = int(seconds * rate)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_image(path: str | os.PathLike[str], *, width: int = 512, height: int = 512, color: str = "orange") -> Path:
    """Write a simple reference image (format from the extension)."""
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill="navy")
    img.save(out_path)
    return out_path
