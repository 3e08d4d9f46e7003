"""The terminal's end-of-run table: every row by manifest row, with status, cost and error; totals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.edit_videos import RunSummary
from klingflow.app.runner import print_summary
from klingflow.report.schema import REPORT_SCHEMA


def _summary(tmp_path: Path, rows: list[dict], **totals: float) -> RunSummary:
    path = tmp_path / "run.parquet"
    pd.DataFrame(rows).reindex(columns=REPORT_SCHEMA.names).to_parquet(path)  # the columns not given are empty
    ok = sum(r["status"] == "succeeded" for r in rows)
    return RunSummary(
        run_id="r1",
        jobs=len(rows),
        succeeded=ok,
        failed=len(rows) - ok,
        estimated_usd=totals.get("estimated", 0.0),
        cost_usd=totals.get("cost", 0.0),
        report_path=str(path),
        html_path=None,
        statuses={r["job_id"]: r["status"] for r in rows},
    )


def _row(row: int, job_id: str, status: str, cost: float | None, error: str | None = None) -> dict:
    return {
        "row": row,
        "job_id": job_id,
        "status": status,
        "cost_usd": cost,
        "estimated_cost_usd": 1.01,
        "error": error,
    }


def test_every_row_is_shown_with_its_cost_and_error_even_with_a_repeated_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two rows share an id: both are listed by row number (a dict keyed by id would show only one)."""
    rows = [
        _row(2, "dup", "failed", None, "row 2 (dup): file not found"),
        _row(1, "dup", "succeeded", 1.01),
        _row(3, "x", "failed", 0.5, "row 3 (x): HTTP 422: " + "a" * 400),
    ]
    print_summary(_summary(tmp_path, rows, cost=1.51))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "│ " in line and ("dup" in line or " x " in line)]
    assert [line.split("│")[1].strip() for line in lines] == ["1", "2", "3"]
    assert "$1.01" in lines[0] and "file not found" in lines[1]
    assert out.count("a") < 400 and "…" in out  # the long error is cut short
    assert "1/3 succeeded, $1.51 billed" in out


def test_a_dry_run_ends_with_its_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each ready row shows its estimate; the last line is the estimate, not "0 succeeded, $0.00 billed"."""
    rows = [_row(1, "a", "dry_run", None), _row(2, "b", "dry_run", None), _row(3, "c", "failed", None, "bad")]
    print_summary(_summary(tmp_path, rows, estimated=2.02))
    out = capsys.readouterr().out
    assert "dry run: 2/3 job(s) ready, 1 failed, estimate $2.02; nothing was submitted" in out
    assert "┃ estimate" in out and "┃ cost" not in out and "succeeded" not in out and "billed" not in out


def test_a_trimmed_clip_that_succeeded_says_so_in_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 12 s clip trimmed to 10 s is "succeeded" with a warning that only its first 10 s was edited."""
    trimmed = _row(1, "long", "succeeded", 3.36) | {
        "preprocess_actions": ["trim"],
        "source_duration_s": 12.0,
        "input_duration_s": 10.0,
    }
    print_summary(_summary(tmp_path, [trimmed, _row(2, "short", "succeeded", 1.01)], cost=4.37))
    out = " ".join(capsys.readouterr().out.split())
    assert "trimmed: only the first 10.0 s of the 12.0 s clip was edited" in out.replace("│ ", "")
