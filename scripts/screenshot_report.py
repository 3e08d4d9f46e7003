"""Screenshot a klingflow HTML report with headless Chromium, to check by eye how it reads.

    # an existing report
    .venv/bin/python scripts/screenshot_report.py reports/_html/run-<run_id>.html -o /tmp/report.png
    # or a demo history (synthetic clips, 2 runs) written to a temp folder, then screenshotted
    .venv/bin/python scripts/screenshot_report.py --demo -o /tmp/report.png

Chromium: `apt-get install -y chromium` (Debian) or set KLINGFLOW_CHROMIUM to a Chrome/Chromium binary.
The report is one offline file, so Chromium runs with networking features off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klingflow.models import JobRecord

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """KLINGFLOW_CHROMIUM, /usr/bin/chromium, or the first Chrome/Chromium on PATH."""
    explicit = os.environ.get("KLINGFLOW_CHROMIUM")
    if explicit:
        return explicit
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def screenshot(
    html: Path | str,
    png: Path,
    *,
    width: int = 1280,
    height: int = 2000,
    chromium: str | None = None,
    timeout_s: float = 120.0,
    wait_ms: int = 0,
    offline: bool = True,
) -> Path:
    """Render `html` (a file, or an http URL such as a Prefect UI page) headless and write a width x height PNG;
    raises if Chromium fails or writes nothing. `wait_ms` lets a single-page app load its data first."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium, or set KLINGFLOW_CHROMIUM)")
    png = Path(png).absolute()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="klingflow-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []),
            html if isinstance(html, str) and "://" in html else Path(html).absolute().as_uri(),
        ]
        if not offline:
            cmd.remove("--disable-background-networking")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return png


STYLES = ("watercolour", "neon noir", "claymation")


def _restyle(src: Path, dst: Path) -> Path:
    """A stand-in for an edit: the same clip with inverted, warmer colours (so before/after differ)."""
    import av
    import numpy as np

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for frame in inp.decode(stream_in):
            rgb = 255 - frame.to_ndarray(format="rgb24")
            rgb[..., 0] = np.minimum(255, rgb[..., 0].astype(np.int16) + 60).astype(np.uint8)
            new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(new.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return dst


def _demo_job(run: int, i: int, media: Path, start: datetime) -> JobRecord:
    from klingflow.endpoint import cost_usd
    from klingflow.media.synth import make_clip
    from klingflow.models import JobRecord

    seconds = 3 + i % 3
    src = make_clip(media / f"run{run}-{i}-in.mp4", seconds=seconds, width=640, height=360, audio=False)
    out = _restyle(src, media / f"run{run}-{i}-out.mp4")
    sub = start + timedelta(hours=run, seconds=i * 5)
    cost = float(cost_usd(seconds))
    job = JobRecord(
        job_id=f"job-{i + 1}",
        row=i + 1,
        prompt=f"Restyle @Video1 as a {STYLES[i % 3]} scene",
        video=str(src),
        input_path=str(src),
        input_duration_s=float(seconds),
        estimated_seconds=seconds,
        estimated_cost_usd=cost,
        submitted_at=sub,
        started_at=sub + timedelta(seconds=4 + 3 * i),
        completed_at=sub + timedelta(seconds=60 + 25 * i + 10 * run),
        status="succeeded",
        output_path=str(out),
        output_url=f"https://v3.fal.media/files/demo/run{run}-{i}.mp4",
        output_duration_s=float(seconds),
        billed_seconds=float(seconds),
        cost_usd=cost,
        cost_source="header",
    )
    if run == 1 and i >= 2:  # the failures group into one kind however their rows and seconds differ
        job = job.fail("collect", f"collect failed: request timed out after {3590 + i} s")
        job = job.model_copy(update={"output_path": None, "cost_usd": None, "billed_seconds": None})
    if run == 1 and i == 1:  # estimated, never billed: not an estimate error
        job = job.model_copy(
            update={"status": "skipped_budget", "error": "row 2 (job-2): skipped: the budget cap was reached"}
        )
        job = job.model_copy(update={"output_path": None, "cost_usd": None, "billed_seconds": None})
    return job


DEMO_RUNS = (
    ("4f6c2a9e-1b7d-4c3e-9a51-0d2e8f7b6a13", "monday-batch"),
    ("b81d3e07-52fa-4e6b-8c90-7a1f2d4e5c68", "tuesday-batch"),
)


def demo_history(folder: Path, *, jobs: int = 5) -> Path:
    """Write a two-run demo history (named runs of one manifest, real synthetic clips); return the report dir."""
    from klingflow.endpoint import ENDPOINT_ID
    from klingflow.report.writer import RunInfo, records_to_table, write_run_report

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    manifest = folder / "batch.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("id,prompt,video\n" + "".join(f"job-{i + 1},{STYLES[i % 3]},in.mp4\n" for i in range(jobs)))
    for run, (run_id, name) in enumerate(DEMO_RUNS):
        records = [_demo_job(run, i, folder / "media", start) for i in range(jobs)]
        table = records_to_table(
            records,
            run_id=run_id,
            run_started_at=start + timedelta(hours=run),
            backend="simulator",
            endpoint=ENDPOINT_ID,
            run=RunInfo.of(str(manifest), name),
        )
        write_run_report(table, folder / "reports", run_id=run_id)
    return folder / "reports"


def demo_report(folder: Path) -> Path:
    """Write a two-run demo history with real synthetic clips and its cross-run HTML report."""
    from klingflow.report.html import write_html
    from klingflow.report.writer import read_history

    reports = demo_history(folder)
    return write_html(read_history(reports), reports / "_html" / "demo.html", title="klingflow demo report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, help="The HTML report to render")
    parser.add_argument("--demo", action="store_true", help="Generate a demo report first and render it")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.png"), help="PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.demo:
        args.html = demo_report(Path(tempfile.mkdtemp(prefix="klingflow-demo-")))
    if args.html is None:
        parser.error("give an HTML file or --demo")
    png = screenshot(args.html, args.output, width=args.width, height=args.height)
    print(f"{args.html} -> {png}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
