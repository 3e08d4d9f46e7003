"""Benchmark the preprocess stage on this machine: probe latency and transform speed.

    .venv/bin/python bench/bench_preprocess.py [--seconds 10] [--preset medium] [--probe-runs 25]

Prints, per input kind, the median probe time, and for representative transforms the wall time of
preprocess_job (fresh work dir, so no cache hit) as a speed ratio: video seconds / wall seconds
(>1 = faster than real time). Also times one SDR transform done in-process with PyAV, to compare
against the imageio-ffmpeg subprocess path the stage uses.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.media.probe import probe_video
from klingflow.media.synth import make_clip
from klingflow.models import JobRecord

HDR10 = {"codec": "libx265", "pix_fmt": "yuv420p10le", "color_trc": 16, "color_primaries": 9, "colorspace": 9}


def sources(root: Path, seconds: float) -> dict[str, Path]:
    fhd = {"width": 1920, "height": 1080, "fps": 30, "seconds": seconds}
    specs = {
        "h264_1080p_mp4": ("a.mp4", fhd),
        "h264_1080p_mkv": ("b.mkv", {**fhd, "container_format": "matroska"}),
        "h264_1080p_long": ("long.mp4", {**fhd, "seconds": seconds + 4}),
        "phone_rotated_vfr": ("phone.mp4", {**fhd, "rotation": 90, "vfr": True}),
        "hevc10_hdr_pq_1080p": ("hdr.mp4", {**fhd, **HDR10}),
        "h264_4k": ("uhd.mp4", {**fhd, "width": 3840, "height": 2160, "seconds": min(seconds, 4)}),
        "vp9_480p_webm": ("sd.webm", {**fhd, "width": 854, "height": 480, "codec": "libvpx-vp9"}),
    }
    return {name: make_clip(root / file, **kwargs) for name, (file, kwargs) in specs.items()}


def bench_probe(paths: dict[str, Path], runs: int) -> None:
    print(f"\nprobe_video, median of {runs} (ms)")
    for name, path in paths.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            probe_video(path)
            times.append(time.perf_counter() - start)
        print(f"  {name:24s} {statistics.median(times) * 1000:7.2f}")


def bench_stage(paths: dict[str, Path], root: Path, preset: str) -> None:
    print(f"\npreprocess_job (libx264 preset={preset}), speed = output video s / wall s")
    for i, (name, path) in enumerate(paths.items()):
        settings = PreprocessSettings(work_dir=str(root / f"work{i}"), x264_preset=preset)
        record = JobRecord(job_id=name, row=i, prompt="@Video1", video=str(path))
        start = time.perf_counter()
        out = preprocess_job(record, settings)
        wall = time.perf_counter() - start
        if out.status == "failed":
            print(f"  {name:24s} FAILED {out.error}")
            continue
        ratio = (out.input_duration_s or 0) / wall
        actions = ",".join(out.preprocess_actions)
        print(f"  {name:24s} {wall:7.2f} s  {ratio:7.2f}x  {out.input_width}x{out.input_height}  [{actions}]")


def pyav_transcode(src: Path, dst: Path, preset: str) -> float:
    """Same-size H.264 re-encode in-process (video only): the PyAV alternative to the CLI path."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "+faststart"}) as out:
        in_stream = inp.streams.video[0]
        in_stream.thread_type = "AUTO"
        stream = out.add_stream("libx264", rate=in_stream.average_rate, options={"preset": preset, "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = in_stream.width, in_stream.height, "yuv420p"
        stream.time_base = Fraction(1, 90000)
        for frame in inp.decode(in_stream):
            frame = frame.reformat(format="yuv420p")
            frame.pts = int(frame.time * 90000)
            frame.time_base = stream.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return probe_video(dst).duration_s


def bench_pyav_vs_cli(src: Path, root: Path, preset: str) -> None:
    import subprocess

    from klingflow.media.ffmpeg import ffmpeg_exe

    print(f"\nsame-size 1080p H.264 re-encode, video only (preset={preset}): PyAV in-process vs ffmpeg CLI")
    start = time.perf_counter()
    seconds = pyav_transcode(src, root / "pyav.mp4", preset)
    wall = time.perf_counter() - start
    print(f"  PyAV            {wall:7.2f} s  {seconds / wall:7.2f}x")
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-an", "-c:v", "libx264", "-preset", preset]
    cmd += ["-crf", "18", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(root / "cli.mp4")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    print(f"  ffmpeg CLI      {wall:7.2f} s  {probe_video(root / 'cli.mp4').duration_s / wall:7.2f}x")
    start = time.perf_counter()
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-version"], check=True, capture_output=True)
    print(f"  (ffmpeg process start: {(time.perf_counter() - start) * 1000:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the 1080p test clips")
    stage_preset = PreprocessSettings.model_fields["x264_preset"].default
    parser.add_argument("--preset", default=stage_preset, help=f"libx264 preset (default: the stage's, {stage_preset})")
    parser.add_argument("--probe-runs", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        paths = sources(root / "src", args.seconds)
        print(f"generated {len(paths)} clips in {time.perf_counter() - start:.1f} s")
        bench_probe(paths, args.probe_runs)
        bench_stage(paths, root, args.preset)
        bench_pyav_vs_cli(paths["h264_1080p_mp4"], root, args.preset)


if __name__ == "__main__":
    main()
