"""Builders shared by the report tests: realistic JobRecords and a small multi-run history (no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from klingflow.endpoint import ENDPOINT_ID, cost_usd
from klingflow.media.synth import make_clip
from klingflow.models import ElementSpec, JobRecord
from klingflow.report.writer import RunInfo, records_to_table, write_run_report

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def source_probe(path: str, seconds: float = 5.0) -> dict:
    """A VideoProbe-shaped dict as preprocess stores it in JobRecord.source."""
    return {
        "path": path,
        "size_bytes": 123_456,
        "container": "mov,mp4,m4a,3gp,3g2,mj2",
        "duration_s": seconds,
        "video_codec": "h264",
        "pix_fmt": "yuv420p",
        "coded_width": 1280,
        "coded_height": 720,
        "rotation": 0,
        "width": 1280,
        "height": 720,
        "fps": 24.0,
        "base_fps": 24.0,
        "is_vfr": False,
        "bit_depth": 8,
        "color_transfer": None,
        "color_primaries": None,
        "is_hdr": False,
        "has_audio": True,
        "audio_codec": "aac",
    }


def succeeded(
    job_id: str,
    row: int,
    *,
    seconds: int = 5,
    queued: float = 2.0,
    processing: float = 60.0,
    start: datetime = T0,
    video: str = "/data/in.mp4",
    output_path: str | None = None,
    input_path: str | None = None,
) -> JobRecord:
    """A job that went through every stage and was billed `seconds` seconds at the endpoint's price."""
    submitted = start + timedelta(seconds=row)
    return JobRecord(
        job_id=job_id,
        row=row,
        prompt=f"Make @Video1 look like a watercolour painting ({job_id})",
        video=video,
        images=["/data/ref.png"],
        elements=[ElementSpec(frontal="/data/face.png")],
        status="succeeded",
        source=source_probe(video, seconds),
        source_sha256="a" * 64,
        preprocess_actions=["passthrough"],
        input_path=input_path or video,
        input_sha256="b" * 64,
        input_bytes=123_456,
        input_duration_s=float(seconds),
        input_width=1280,
        input_height=720,
        job_key=f"key-{job_id}",
        estimated_seconds=seconds,
        estimated_cost_usd=float(cost_usd(seconds)),
        video_url=f"https://sim.local/files/{job_id}.mp4",
        uploaded_bytes=123_456,
        request_id=f"req-{job_id}",
        submitted_at=submitted,
        started_at=submitted + timedelta(seconds=queued),
        completed_at=submitted + timedelta(seconds=queued + processing),
        status_polls=7,
        output_url=f"https://sim.local/out/{job_id}.mp4",
        output_path=output_path or f"/outputs/{job_id}.mp4",
        output_sha256="c" * 64,
        output_bytes=234_567,
        output_duration_s=float(seconds),
        billed_seconds=float(seconds),
        cost_usd=float(cost_usd(seconds)),
        cost_source="header",
    )


def failed(
    job_id: str,
    row: int,
    *,
    stage: str = "submit",
    error: str = "HTTP 422: video too short",
    video: str = "/data/bad.mp4",
) -> JobRecord:
    """A job that failed before anything was billed (most cost/timing fields stay None)."""
    return JobRecord(
        job_id=job_id,
        row=row,
        prompt="Turn @Video1 into claymation",
        video=video,
        status="failed",
        error=error,
        error_stage=stage,
        estimated_seconds=4,
        estimated_cost_usd=float(cost_usd(4)),
    )


def write_run(
    report_dir: Path,
    run_id: str,
    records: list[JobRecord],
    *,
    started: datetime = T0,
    backend: str = "simulator",
    run: RunInfo | None = None,
) -> Path:
    """records → table → parquet file, as the report task does."""
    table = records_to_table(
        records, run_id=run_id, run_started_at=started, backend=backend, endpoint=ENDPOINT_ID, run=run
    )
    return write_run_report(table, report_dir, run_id=run_id)


def three_run_history(report_dir: Path) -> dict[str, list[JobRecord]]:
    """Three runs on two days: a clean run, a mixed run, an all-failed run (all-null cost columns)."""
    runs = {
        "run-a": [succeeded("a1", 1, seconds=5), succeeded("a2", 2, seconds=10, processing=120.0)],
        "run-b": [
            succeeded("b1", 1, seconds=3, queued=10.0, start=T0 + timedelta(days=1)),
            failed("b2", 2),
            failed("b3", 3, stage="collect", error="timeout after 3600 s"),
        ],
        "run-c": [failed("c1", 1), failed("c2", 2)],
    }
    starts = {"run-a": T0, "run-b": T0 + timedelta(days=1), "run-c": T0 + timedelta(days=1, hours=3)}
    for run_id, records in runs.items():
        write_run(report_dir, run_id, records, started=starts[run_id])
    return runs


def clip_pair(tmp: Path, name: str) -> tuple[Path, Path]:
    """A tiny real input clip and a different-looking 'edited' output of the same length."""
    before = make_clip(tmp / f"{name}-in.mp4", seconds=3, width=320, height=180, audio=False)
    after = make_clip(tmp / f"{name}-out.mp4", seconds=3, width=320, height=180, fps=30, audio=False)
    return before, after
