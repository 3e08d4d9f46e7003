"""Carry out a Plan with imageio-ffmpeg's static ffmpeg binary, in a subprocess.

Why a subprocess for every transform, and PyAV only for probing:
- HDR needs `zscale` (linearise PQ/HLG, BT.2020 -> BT.709) + `tonemap`; PyAV's bundled FFmpeg has
  no zscale, imageio-ffmpeg's build has both. One transform path beats two that drift apart.
- The CLI already does what PyAV would make us hand-write: auto-rotation (display matrix baked
  in and removed), `-fps_mode cfr`, audio resampling/re-timing, `tpad`/`apad`, `+faststart`.
- A process can be killed on timeout and its memory is returned; libx264 (GPL) runs outside
  our process.
Measured (bench/bench_preprocess.py, 2 vCPU, 10 s 1080p30, veryfast, one run): the same video-only
re-encode runs at 1.97x real time in PyAV and 1.46x through the CLI, process start ~10 ms. The
CLI is slower by about a quarter; features, one transform path and isolation outweigh that. HDR
tone mapping (zscale, float RGB) runs at 0.59x real time and dominates; remux and trim by stream
copy take under 0.1 s.
"""

from __future__ import annotations

import re
import subprocess

import imageio_ffmpeg

from klingflow.errors import MediaError
from klingflow.media.plan import Colour, Plan


def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled static ffmpeg (its lookup is cached; IMAGEIO_FFMPEG_EXE overrides)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _zscale_in(colour: Colour) -> str:
    return f"pin={colour.primaries}:tin={colour.transfer}:min={colour.matrix}:rin={colour.range}"


# The tone curve reaches white at this multiple of the source's peak: the brightest measured pixel lands just
# under white (8 frames are measured; others may be a little brighter) instead of at it.
TONEMAP_HEADROOM = 1.5


def tonemap_filter(colour: Colour, peak_nits: float) -> str:
    """HDR (PQ/HLG) to SDR BT.709: linear light (1.0 = 100 cd/m²), BT.709 primaries, then Reinhard's curve.

    Measured on a 0-4000 cd/m² ramp (tests/media/test_hdr.py) against the other curves tonemap has: Reinhard
    (param 0.5) keeps mid-grey near SDR's (20 cd/m² -> code ~122 of 255, reference 131) and rolls off to the
    peak without clipping; Möbius kept grey but flattened everything over 200 cd/m² into the last 9 codes
    (27 % of the ramp clipped); Hable kept a highlight gradient but put grey 1.4 stops low. The peak is
    passed explicitly: after zscale the frames are tagged linear, and tonemap would assume 100 cd/m² (the
    clipping the issue measured). `desat=2` greys only what is brighter than twice SDR white (the default);
    it needs the frames' luma coefficients, so they are tagged BT.709 first (zscale tags planar float RGB as
    "gbr", whose coefficients are none: desat then pushed a grey ramp to white).
    """
    peak = max(peak_nits * TONEMAP_HEADROOM / 100.0, 1.0)
    return (
        f"zscale={_zscale_in(colour)}:t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,"
        f"setparams=colorspace=bt709,tonemap=tonemap=reinhard:param=0.5:desat=2:peak={peak:.4g},zscale=t=bt709:m=bt709:r=tv"
    )


def colour_filter(colour: Colour) -> str:
    """SDR source description -> BT.709 limited range, by zscale (zimg): matrix, range, and primaries in linear light.

    RGB and palette sources (GIF, PNG) are unpacked to planar RGB first, losslessly, so that no implicit
    RGB->YUV conversion (swscale's BT.601 default) runs before zscale.
    """
    unpack = "format=gbrp," if colour.matrix == "gbr" else ""
    return f"{unpack}zscale={_zscale_in(colour)}:p=bt709:t=bt709:m=bt709:r=tv:dither=ordered"


TAG_BT709 = "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"


def video_filters(plan: Plan) -> str:
    """The -vf chain; rotation is applied by ffmpeg's autorotate before it, so sizes are displayed sizes.

    The colour conversion runs first, at the source's size; every re-encode ends tagged BT.709 limited.
    """
    chain: list[str] = []
    if plan.start_s:  # a lead-in: each stream's first sample lands at 0 (no frame repeated to fill the gap)
        chain.append("setpts=PTS-STARTPTS")
    if plan.tonemap and plan.colour_in is not None:
        chain += [tonemap_filter(plan.colour_in, plan.tonemap_peak_nits or 1000.0), "format=yuv420p"]
    elif plan.colour_in is not None:
        chain += [colour_filter(plan.colour_in), "format=yuv420p"]
    if plan.fps:
        chain.append(f"fps={plan.fps:g}")
    if plan.scale:
        chain.append(f"scale={plan.scale[0]}:{plan.scale[1]}:flags=bicubic")
    if plan.box:
        chain.append(f"pad={plan.box[0]}:{plan.box[1]}:(ow-iw)/2:(oh-ih)/2:black")
    if plan.freeze_to_s:
        chain.append(f"tpad=stop_mode=clone:stop_duration={plan.freeze_to_s:g}")
    chain += ["format=yuv420p", TAG_BT709, "setsar=1"]
    return ",".join(chain)


def _audio_args(plan: Plan, audio_kbps: int) -> list[str]:
    if plan.audio == "none":
        return ["-an"]
    if plan.audio == "copy":
        return ["-c:a", "copy"]
    args = ["-c:a", "aac", "-b:a", f"{audio_kbps}k"]
    filters = [*(["asetpts=PTS-STARTPTS"] if plan.start_s else []), *(["apad"] if plan.freeze_to_s else [])]
    return [*args, "-af", ",".join(filters)] if filters else args


def ffmpeg_args(src: str, dst: str, plan: Plan, *, crf: int, preset: str, audio_kbps: int) -> list[str]:
    """The full ffmpeg command line for a remux or transcode plan (output is always mp4 + faststart)."""
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", src]
    args += ["-map", "0:v:0", "-map", "0:a:0?", "-dn", "-sn", "-map_chapters", "-1"]
    if plan.mode == "remux":
        args += ["-c:v", "copy"]
    else:
        kbps = plan.video_max_kbps or 0
        args += ["-vf", video_filters(plan), "-fps_mode", "cfr"]
        args += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p"]
        args += ["-profile:v", "high", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k"]
        args += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
    args += _audio_args(plan, audio_kbps)
    end = plan.trim_s or plan.freeze_to_s
    if end:
        args += ["-t", f"{end:g}"]
    return [*args, "-movflags", "+faststart", "-f", "mp4", dst]


def decode_errors(path: str, *, timeout_s: float) -> str | None:
    """Decode every video and audio frame of a file (no output); what the decoders said, or None when clean.

    A damaged mdat keeps the index intact: the file probes fine and would be sent (fal's decoder then fails
    the paid job). Only decoding all of it shows the damage.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", path, "-map", "0:v:0", "-map", "0:a?"]
    try:
        done = subprocess.run([*args, "-f", "null", "-"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"decoding the file took longer than {timeout_s:g} s") from exc
    lines = [re.sub(r" @ 0x[0-9a-f]+", "", line).strip() for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == 0 and not lines:
        return None
    more = f" (+{len(lines) - 2} more)" if len(lines) > 2 else ""
    return "; ".join(lines[:2]) + more if lines else f"ffmpeg exit {done.returncode}"


def run_ffmpeg(args: list[str], *, timeout_s: float) -> None:
    """Run ffmpeg; MediaError with the tail of its stderr if it fails or overruns (the caller removes
    the partial output)."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffmpeg took longer than {timeout_s:g} s") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise MediaError(f"ffmpeg failed (exit {done.returncode}): {tail or 'no message'}")
