"""Is the video fal receives the video the user shot? Colour, HDR, range, start and length, per clip.

    .venv/bin/python -m bench.fidelity [--cpu] [--preset veryfast]

Generates a corpus (SMPTE-like bars through every source colour description, an HDR10 PQ ramp to
4000 cd/m² and an HLG ramp without light-level metadata, an edit-listed late start, audio longer than
the video, a 14 s clip, a corrupted mdat), preprocesses each clip and prints:
- ΔE2000 per bar, the output decoded as BT.709 limited against the BT.709 original (goal: every bar ≤ 3
  for SDR sources; bars a source's gamut cannot hold are shown in brackets and not judged);
- the share of pixels with a clipped channel for HDR (goal: ≤ 1 %);
- video frames in/out (goal: only what a frame-rate change or a cut forces), every stream's first pts
  and end (goal: start 0, end ≤ 10.05 s);
- with --cpu, the CPU of the stage against one plain ffmpeg command doing the same conversion (goal ≤ 1.15x).
Exits 1 when any goal is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

from klingflow.media.ffmpeg import ffmpeg_exe
from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord
from tests.media.colour import bar_errors, decode_bt709, hlg_signal, make_bars, make_ramp, pq_signal

SDR: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "bt709 (passthrough)": ("bt709.mp4", {"space": "bt709"}, ()),
    "bt2020 SDR HEVC 10-bit": ("bt2020.mp4", {"space": "bt2020", "pix_fmt": "yuv420p10le", "codec": "libx265"}, ()),
    "bt601 625 (bt470bg) SD": ("pal.mp4", {"space": "bt601-6-625", "size": (720, 576)}, ()),
    "smpte170m HD": ("ntsc_hd.mp4", {"space": "smpte170m"}, (2,)),
    "smpte240m HD": ("240m.mov", {"space": "smpte240m"}, (2,)),
    "untagged SD 480": ("untagged.mp4", {"space": "smpte170m", "size": (640, 480), "tag": False}, (2,)),
    "MJPEG yuvj420p AVI": (
        "webcam.avi",
        {"space": "bt601-6-625", "range_": "pc", "pix_fmt": "yuvj420p", "codec": "mjpeg", "size": (720, 576)},
        (),
    ),
    "full-range H.264": ("full.mp4", {"space": "bt709", "range_": "pc", "pix_fmt": "yuvj420p"}, ()),
    "GIF palette": ("anim.gif", {"space": None, "codec": "gif", "size": (640, 360)}, ()),
    "PNG RGB in mov": ("png.mov", {"space": None, "codec": "png"}, ()),
}
MAX_END_S, MAX_START_S = 10.05, 0.05


def spans(path: str | Path) -> dict[str, tuple[float, float, int]]:
    """Per stream type: (first pts s, end s, packets), from the packets."""
    out = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            if stream.type not in ("video", "audio"):
                continue
            pts = [(p.pts, p.duration or 0) for p in container.demux(stream) if p.pts is not None]
            container.seek(0)
            if pts:
                tb = stream.time_base
                out[stream.type] = (
                    float(min(p for p, _ in pts) * tb),
                    float(max(p + d for p, d in pts) * tb),
                    len(pts),
                )
    return out


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def timing_corpus(root: Path) -> dict[str, tuple[Path, int | None]]:
    """name -> (clip, expected output video frames; None: must fail)."""
    hd = {"width": 1280, "height": 720}
    base = make_clip(root / "base.mp4", **hd, seconds=5)
    _ffmpeg("-itsoffset", "2", "-i", str(base), "-c", "copy", str(root / "late.mp4"))
    v10 = make_clip(root / "v10.mp4", **hd, seconds=10, audio=False)
    tone = "sine=frequency=440:sample_rate=48000:duration=10.3"
    _ffmpeg("-i", str(v10), "-f", "lavfi", "-i", tone, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
            str(root / "alonger.mp4"))  # fmt: skip
    long14 = make_clip(root / "long14.mp4", **hd, seconds=14)
    data = bytearray(base.read_bytes())
    at = data.index(b"mdat") + (len(data) - data.index(b"mdat")) // 3
    data[at : at + 4096] = np.random.default_rng(25).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (root / "corrupt.mp4").write_bytes(bytes(data))
    return {
        "first pts 2.0 s (empty edit)": (root / "late.mp4", 120),
        "video 10.0 s, audio 10.3 s": (root / "alonger.mp4", 240),
        "14 s clip, too_long=trim": (long14, 240),
        "corrupted mdat": (root / "corrupt.mp4", None),
    }


def run(src: Path, work: Path, preset: str) -> JobRecord:
    record = JobRecord(job_id=src.stem, row=1, prompt="@Video1", video=str(src))
    return preprocess_job(record, PreprocessSettings(work_dir=str(work), x264_preset=preset))


def _timing_line(src: Path, out: Path) -> tuple[str, bool]:
    before, after = spans(src), spans(out)
    ok = all(start <= MAX_START_S and end <= MAX_END_S for start, end, _ in after.values())
    text = "  ".join(
        f"{kind} {before[kind][0]:.3f}..{before[kind][1]:.3f} -> {a[0]:.3f}..{a[1]:.3f} s" for kind, a in after.items()
    )
    return text, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--cpu", action="store_true", help="also compare the stage's CPU to one plain ffmpeg")
    args = parser.parse_args()
    misses: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("SDR colour: ΔE2000 per bar (27 bars: 7 colours at 100/75/40 %, 6 greys), goal every bar ≤ 3")
        for i, (name, (file_name, kwargs, unholdable)) in enumerate(SDR.items()):
            src = make_bars(root / file_name, **kwargs)
            record = run(src, root / f"w{i}", args.preset)
            if record.status != "pending":
                misses.append(f"{name}: {record.error}")
                print(f"  {name:26s} FAILED {record.error}")
                continue
            de = bar_errors(record.input_path)
            judged = np.delete(de, list(unholdable))
            frames_in, frames_out = spans(src)["video"][2], spans(record.input_path)["video"][2]
            timing, timing_ok = _timing_line(src, Path(record.input_path))
            rate_change = {"fps", "cfr"} & set(record.preprocess_actions)  # a GIF's 4/5 cs delays are VFR
            ok = judged.max() <= 3.0 and timing_ok and (frames_out == frames_in or bool(rate_change))
            misses += [] if ok else [name]
            bars = " ".join(f"[{x:.1f}]" if j in unholdable else f"{x:.1f}" for j, x in enumerate(de))
            colour = [a for a in record.preprocess_actions if ":" in a]
            print(f"  {name:26s} {'ok  ' if ok else 'MISS'} max {judged.max():4.2f} mean {de.mean():4.2f}  "
                  f"frames {frames_in}->{frames_out}  {colour}")  # fmt: skip
            print(f"      bars: {bars}\n      {timing}")
        print("\nHDR without light-level metadata: clipped-pixel share, goal ≤ 1 %")
        for kind, peak, trc in (("PQ ramp to 4000 cd/m²", 4000.0, 16), ("HLG ramp to 1000 cd/m²", 1000.0, 18)):
            nits = np.linspace(0, peak, 1280)
            signal = pq_signal(nits) if trc == 16 else hlg_signal(nits)
            src = make_ramp(root / f"hdr{trc}.mp4", nits, signal, trc)
            record = run(src, root / f"h{trc}", args.preset)
            if record.status != "pending":
                misses.append(f"{kind}: {record.error}")
                print(f"  {kind:26s} FAILED {record.error}")
                continue
            rgb = decode_bt709(record.input_path)
            clipped = float((rgb[:, 8:-8] >= 254.5).any(axis=-1).mean())
            row = rgb[360, 8:-8].mean(axis=-1)
            grey = row[np.argmin(np.abs(nits[8:-8] - 20))]
            ok = clipped <= 0.01
            misses += [] if ok else [kind]
            peak_used = [a for a in record.preprocess_actions if a.startswith("tonemap_peak")]
            print(f"  {kind:26s} {'ok  ' if ok else 'MISS'} clipped {clipped:.2%}  ramp std {row.std():.1f}  "
                  f"20 cd/m² -> {grey:.0f} (SDR 20 %: 131)  {peak_used}")  # fmt: skip
        print("\nTiming: video frames in -> out, every stream's first pts..end in -> out; goal start 0, end ≤ 10.05 s")
        for name, (src, frames) in timing_corpus(root / "timing").items():
            record = run(src, root / f"t{abs(hash(name))}", args.preset)
            if frames is None:
                ok = record.status == "failed" and "corrupt" in (record.error or "")
                misses += [] if ok else [name]
                print(f"  {name:30s} {'ok  ' if ok else 'MISS'} {record.error or 'sent!'}")
                continue
            if record.status != "pending":
                misses.append(f"{name}: {record.error}")
                print(f"  {name:30s} FAILED {record.error}")
                continue
            timing, timing_ok = _timing_line(src, Path(record.input_path))
            frames_in, frames_out = spans(src)["video"][2], spans(record.input_path)["video"][2]
            ok = timing_ok and frames_out == frames
            misses += [] if ok else [name]
            print(f"  {name:30s} {'ok  ' if ok else 'MISS'} frames {frames_in}->{frames_out} (expected {frames})  "
                  f"{record.preprocess_actions}\n      {timing}")  # fmt: skip
        if args.cpu:
            misses += cpu_ratio(root / "cpu", args.preset)
    print(f"\n{len(misses)} miss(es)" + (": " + "; ".join(misses) if misses else ""))
    return 1 if misses else 0


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cpu_ratio(root: Path, preset: str) -> list[str]:
    """CPU of preprocess_job (probe, decisions, ffmpeg) vs one plain ffmpeg with the same filters and encoder."""
    from klingflow.media.ffmpeg import ffmpeg_args
    from klingflow.media.plan import PlanOptions, plan_video
    from klingflow.media.probe import probe_video

    root.mkdir(parents=True)
    src = make_bars(root / "bt2020_10s.mp4", space="bt2020", pix_fmt="yuv420p10le", codec="libx265", seconds=10)
    before = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
    record = run(src, root / "w", preset)
    stage = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - before
    plan = plan_video(probe_video(src), PlanOptions())
    cmd = ffmpeg_args(str(src), str(root / "plain.mp4"), plan, crf=18, preset=preset, audio_kbps=192)
    plain_cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-vf", cmd[cmd.index("-vf") + 1]]
    plain_cmd += ["-c:v", "libx264", "-preset", preset, "-crf", "18", str(root / "plain.mp4")]
    before = _cpu_s(resource.RUSAGE_CHILDREN)
    subprocess.run(plain_cmd, check=True)
    plain = _cpu_s(resource.RUSAGE_CHILDREN) - before
    ratio = stage / plain
    ok = ratio <= 1.15 and record.status == "pending"
    print(f"\nCPU, 10 s 720p BT.2020 -> BT.709 ({os.cpu_count()} cores): stage {stage:.2f} s, "
          f"plain ffmpeg {plain:.2f} s, {ratio:.2f}x (goal ≤ 1.15x) {'ok' if ok else 'MISS'}")  # fmt: skip
    return [] if ok else [f"CPU {ratio:.2f}x"]


if __name__ == "__main__":
    sys.exit(main())
