"""The simulated model: turn an input clip into a visibly edited output mp4 with PyAV.

The edit is deterministic in the prompt (same prompt, same look): a colour grade from the prompt's
hash, a horizontal mirror and a solid band top and bottom, so a thumbnail shows at a glance that
the clip went through the "model". Output: H.264 yuv420p + AAC in mp4, same duration as the input,
audio kept iff requested. Blocking and CPU-bound: call from a worker thread.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ProgressFn = Callable[[int, int], None]


class EditCancelled(Exception):
    """The request was cancelled while its edit was running."""


class Grade:
    """Per-channel lookup tables and a band colour derived from a prompt."""

    def __init__(self, prompt: str) -> None:
        digest = hashlib.sha256(prompt.encode()).digest()
        # One channel boosted, the others strongly damped: an unmistakable tint.
        strong = digest[0] % 3
        gains = [0.35 + 0.25 * (digest[1 + c] / 255) for c in range(3)]
        gains[strong] = 1.25
        ramp = np.arange(256, dtype=np.float32)
        self.luts = [np.clip(ramp * g + 20, 0, 255).astype(np.uint8) for g in gains]
        self.band = np.array([digest[4], digest[5], digest[6]], dtype=np.uint8)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Mirror, tint and band one RGB frame."""
        mirrored = rgb[:, ::-1]
        out = np.empty_like(rgb)
        for c in range(3):
            out[..., c] = self.luts[c][mirrored[..., c]]
        band = max(2, rgb.shape[0] // 12)
        out[:band] = self.band
        out[-band:] = self.band
        return out


def edit_video(
    src: Path,
    dst: Path,
    *,
    prompt: str,
    keep_audio: bool,
    progress: ProgressFn,
    cancel: threading.Event,
    rotation: int = 0,
) -> None:
    """Write the edited version of `src` to `dst` (mp4), carrying over its display `rotation`
    (VideoProbe.rotation: what FFmpeg reports on decoded frames of phone clips)."""
    grade = Grade(prompt)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        rate = vin.average_rate or Fraction(24)
        width, height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        vout = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "23"})
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        if rotation:
            vout.set_display_rotation(rotation)
        aout = None
        if keep_audio and inp.streams.audio:  # every stream must exist before the first packet is muxed
            aout = out.add_stream("aac", rate=inp.streams.audio[0].codec_context.sample_rate or 48000)
            aout.layout = "stereo"
        total = vin.frames or max(1, round(float((vin.duration or 0) * (vin.time_base or 0)) * float(rate)))
        _encode_video(inp, vin, out, vout, grade, total, progress, cancel)
        if aout is not None:
            _encode_audio(src, out, aout)


def _encode_video(inp, vin, out, vout, grade: Grade, total: int, progress: ProgressFn, cancel: threading.Event) -> None:
    last_pts = -1
    for done, frame in enumerate(inp.decode(vin), start=1):
        if cancel.is_set():
            raise EditCancelled
        rgb = frame.to_ndarray(format="rgb24")[: vout.height, : vout.width]
        edited = av.VideoFrame.from_ndarray(grade.apply(rgb), format="rgb24")
        pts = frame.pts if frame.pts is not None else last_pts + 1
        edited.pts, edited.time_base = max(pts, last_pts + 1), frame.time_base or vin.time_base
        last_pts = edited.pts
        out.mux(vout.encode(edited.reformat(format="yuv420p")))
        progress(min(done, total), total)
    out.mux(vout.encode(None))


def _encode_audio(src: Path, out, aout) -> None:
    """Re-encode the first audio track to AAC (a second demux pass keeps the code simple)."""
    with av.open(str(src)) as inp:
        ain = inp.streams.audio[0]
        rate = aout.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        for frame in inp.decode(ain):
            frame.pts = None
            for resampled in resampler.resample(frame):
                out.mux(aout.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(aout.encode(resampled))
        out.mux(aout.encode(None))


def remux_video(src: Path, dst: Path, *, keep_audio: bool, cancel: threading.Event) -> None:
    """fast_copy mode: stream-copy the input into mp4 (no decode/encode), audio iff keep_audio."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        streams = [inp.streams.video[0]]
        if keep_audio and inp.streams.audio:
            streams.append(inp.streams.audio[0])
        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
        for packet in inp.demux(*streams):
            if cancel.is_set():
                raise EditCancelled
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
