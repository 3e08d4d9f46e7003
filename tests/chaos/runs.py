"""`klingflow run` as a subprocess, as a user starts it, for the chaos tests: a manifest of short clips, the
command, and what the simulator billed and the reports say afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from klingflow.media.synth import make_clip


def manifest(root: Path, jobs: int) -> Path:
    """`jobs` edits of one 3 s clip, each with its own prompt (a prompt names its job on the simulator's bills)."""
    clip = make_clip(root / "clip.mp4", seconds=3, width=640, height=360)
    path = root / "manifest.jsonl"
    rows = [{"id": f"job{i}", "prompt": f"Chaos edit {i} of @Video1", "video": str(clip)} for i in range(jobs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def command(manifest: Path, root: Path, name: str, *extra: str) -> list[str]:
    """`klingflow run` on the simulator; `name` keeps its state, outputs and reports apart from other runs'."""
    return [
        sys.executable,
        "-m",
        "klingflow.app.cli",
        "run",
        str(manifest),
        "--backend",
        "simulator",
        "--concurrency",
        "2",
        "--state-dir",
        str(root / f"state-{name}"),
        "--out",
        str(root / f"outputs-{name}"),
        "--report-dir",
        str(root / f"reports-{name}"),
        "--poll-interval",
        "0.1",
        "--poll-max-interval",
        "0.3",
        "--concurrency-limit",
        f"klingflow-chaos-{root.name}",
        *extra,
    ]


def environment(api_url: str, **extra: str) -> dict[str, str]:
    """This test's environment (KLINGFLOW_HOME, FAL_KEY, the simulator's URL) plus the session's Prefect server."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def wait_for_submits(
    submits: Callable[[], int], at_least: int, procs: list[subprocess.Popen[str]], timeout_s: float
) -> None:
    """Return once the simulator has accepted `at_least` submissions (fails if every run ended first)."""
    deadline = time.monotonic() + timeout_s
    while submits() < at_least:
        assert any(p.poll() is None for p in procs), "the runs ended before any submission"
        assert time.monotonic() < deadline, "no submission reached the simulator"
        time.sleep(0.01)


@dataclass
class Outcome:
    """What the simulator billed and what a run's report says."""

    bills_per_job: dict[str, int]
    billed_usd: float
    reports: pd.DataFrame


def outcome(bills: list, report_dirs: list[Path]) -> Outcome:
    """The simulator's bills (per prompt) and the reports' rows of every run."""
    reports = pd.concat([pd.read_parquet(d) for d in report_dirs if d.exists()], ignore_index=True)
    return Outcome(
        bills_per_job=dict(Counter(bill.input["prompt"] for bill in bills)),
        billed_usd=round(sum(float(bill.cost_usd) for bill in bills), 4),
        reports=reports,
    )
