"""`klingflow report`: text/json/csv summaries across runs, filters by run id and date, --html."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from klingflow.report.cli import add_arguments, run
from klingflow.report.summary import parse_bound
from klingflow.report.writer import RunInfo
from tests.report.test_support import T0, succeeded, three_run_history, write_run


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def history(tmp_path: Path) -> Path:
    three_run_history(tmp_path)
    return tmp_path


def test_json_totals_across_all_runs(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """JSON has the totals, per-run and per-day spend, failures by error, percentiles and top jobs."""
    code, out, _ = _run([str(history), "--format", "json"], capsys)
    data = json.loads(out)
    t = data["totals"]
    assert code == 0
    assert (t["runs"], t["jobs"], t["succeeded"], t["failed"]) == (3, 7, 3, 4)
    assert t["success_rate"] == pytest.approx(3 / 7, abs=1e-6)
    assert t["cost_usd"] == pytest.approx(6.048) and t["estimated_cost_usd"] == pytest.approx(11.424)
    assert [(r["run_id"], round(r["cost_usd"], 3)) for r in data["by_run"]] == [
        ("run-a", 5.04),
        ("run-b", 1.008),
        ("run-c", 0.0),
    ]
    assert [(d["day"], d["runs"], d["jobs"]) for d in data["by_day"]] == [("2025-03-01", 1, 2), ("2025-03-02", 2, 5)]
    assert data["failures"][0] == {
        "status": "failed",
        "error_stage": "submit",
        "kind": "HTTP 422: video too short",
        "error": "HTTP 422: video too short",
        "count": 3,
        "runs": 2,
        "examples": ["run-b/b2", "run-c/c1", "run-c/c2"],
    }
    assert t["durations"]["processing_s"] == {"n": 3, "p50": 60.0, "p95": pytest.approx(114.0), "max": 120.0}
    assert data["top_jobs"][0]["job_id"] == "a2"


def test_text_output_is_a_readable_summary(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The terminal view shows each table and the key numbers."""
    code, out, _ = _run([str(history)], capsys)
    assert code == 0
    for expected in (
        "3 run(s), 7 job(s)",
        "Spend by run",
        "Spend by day",
        "Durations",
        "Failures by error",
        "Most expensive jobs",
        "$6.05",
        "HTTP 422: video too short",
        "timeout after 3600 s",
        "run-c",
    ):
        assert expected in out


def test_filter_by_run_ids(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--run-id (repeatable) restricts every number to those runs."""
    _, out, _ = _run([str(history), "--run-id", "run-a", "--run-id", "run-c", "--format", "json"], capsys)
    data = json.loads(out)
    assert [r["run_id"] for r in data["by_run"]] == ["run-a", "run-c"]
    assert data["totals"]["jobs"] == 4 and data["totals"]["cost_usd"] == pytest.approx(5.04)


def test_filter_by_dates(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--since/--until select runs by start; a date-only --until includes that whole day."""
    _, out, _ = _run([str(history), "--since", "2025-03-02", "--format", "json"], capsys)
    assert [r["run_id"] for r in json.loads(out)["by_run"]] == ["run-b", "run-c"]
    _, out, _ = _run([str(history), "--until", "2025-03-01", "--format", "json"], capsys)
    assert [r["run_id"] for r in json.loads(out)["by_run"]] == ["run-a"]
    _, out, _ = _run([str(history), "--since", "2025-03-02T10:00", "--format", "json"], capsys)
    assert [r["run_id"] for r in json.loads(out)["by_run"]] == ["run-c"]  # naive datetime = UTC
    _, out, _ = _run([str(history), "--since", "2025-03-02T11:00:00+00:00", "--format", "json"], capsys)
    assert [r["run_id"] for r in json.loads(out)["by_run"]] == ["run-c"]


def test_csv_tables(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CSV gives one table per call: runs by default, or days/errors/top/jobs with --table."""
    _, out, _ = _run([str(history), "--format", "csv"], capsys)
    runs = list(csv.DictReader(io.StringIO(out)))
    assert [r["run_id"] for r in runs] == ["run-a", "run-b", "run-c"]
    assert float(runs[0]["cost_usd"]) == pytest.approx(5.04) and runs[2]["success_rate"] == "0.0"
    _, out, _ = _run([str(history), "--format", "csv", "--table", "jobs", "--run-id", "run-b"], capsys)
    jobs = list(csv.DictReader(io.StringIO(out)))
    assert [j["job_id"] for j in jobs] == ["b1", "b2", "b3"]
    assert jobs[0]["preprocess_actions"] == "passthrough" and jobs[1]["cost_usd"] == ""
    _, out, _ = _run([str(history), "--format", "csv", "--table", "errors"], capsys)
    assert [e["count"] for e in csv.DictReader(io.StringIO(out))] == ["3", "1"]


def test_html_for_chosen_runs(history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--html writes one page covering exactly the filtered runs."""
    out_html = tmp_path / "out" / "two.html"
    code, _, err = _run(
        [str(history), "--run-id", "run-a", "--run-id", "run-b", "--html", str(out_html), "--no-thumbnails"], capsys
    )
    page = out_html.read_text()
    assert code == 0 and str(out_html) in err
    assert "<code>run-a</code>" in page and "<code>run-b</code>" in page and "<code>run-c</code>" not in page


def test_no_history_or_no_match_exits_1(history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty folder or filters that match nothing exit 1 with a message on stderr; a bad date exits 2."""
    assert _run([str(tmp_path / "empty")], capsys)[0] == 1
    code, out, err = _run([str(history), "--run-id", "nope"], capsys)
    assert (code, out) == (1, "") and "unknown run id(s): nope" in err
    assert _run([str(history), "--since", "last tuesday"], capsys)[0] == 2


def test_parse_bound_day_semantics() -> None:
    """A date alone starts the day for --since and ends it (next midnight, exclusive) for --until."""
    assert parse_bound("2025-03-01", end=False).isoformat() == "2025-03-01T00:00:00+00:00"
    assert parse_bound("2025-03-01", end=True).isoformat() == "2025-03-02T00:00:00+00:00"
    assert parse_bound("2025-03-01T12:00+02:00", end=True).isoformat() == "2025-03-01T10:00:00+00:00"


def test_csv_cells_a_spreadsheet_would_evaluate_are_neutralised(tmp_path: Path, capsys) -> None:
    """OWASP CSV injection: ids and prompts starting with = + - @ (or tab/CR) get a leading apostrophe."""
    from tests.report.test_support import succeeded, write_run

    evil = succeeded("@SUM(A1)", 1).with_(prompt='=HYPERLINK("http://x","click") @Video1')
    write_run(tmp_path, "run-x", [evil, succeeded("-1", 2).with_(prompt="+plain @Video1")])
    _, out, _ = _run([str(tmp_path), "--format", "csv", "--table", "jobs"], capsys)
    jobs = list(csv.DictReader(io.StringIO(out)))
    assert [j["job_id"] for j in jobs] == ["'@SUM(A1)", "'-1"]
    assert jobs[0]["prompt"].startswith("'=HYPERLINK") and jobs[1]["prompt"] == "'+plain @Video1"
    assert float(jobs[0]["cost_usd"]) > 0  # numbers stay numbers
    _, out, _ = _run([str(tmp_path), "--format", "csv", "--table", "top"], capsys)
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in csv.reader(io.StringIO(out)) for cell in row)


def test_the_report_file_a_run_prints_is_accepted(history: Path, capsys) -> None:
    """`klingflow report reports/run-X.parquet`: that run alone, not "no runs"."""
    code, out, _ = _run([str(history / "run-run-b.parquet"), "--format", "json"], capsys)
    assert code == 0
    assert [r["run_id"] for r in json.loads(out)["by_run"]] == ["run-b"]


def test_text_and_json_name_each_run_and_its_manifest(tmp_path: Path, capsys) -> None:
    """`klingflow report` shows each run's name and manifest (path and sha256) in text and JSON; a run from a
    schema v2 file shows "—"."""
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,prompt,video\n")
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    write_run(tmp_path / "r", "run-n", [succeeded("a", 1)], run=RunInfo.of(str(manifest), "nightly-42"))
    write_run(tmp_path / "r", "run-old", [succeeded("b", 1)], started=T0 + timedelta(hours=1))
    _, out, _ = _run([str(tmp_path / "r")], capsys)
    runs_table = out.split("Runs: name and manifest", 1)[1]
    row = next(line for line in runs_table.splitlines() if "run-n" in line)
    assert "nightly-42" in row and str(manifest)[:20] in row
    assert f"{sha[:12]})" in runs_table  # "(sha256 …)" may wrap onto the row's next line with a long tmp path
    _, out, _ = _run([str(tmp_path / "r"), "--format", "json"], capsys)
    runs = {r["run_id"]: r for r in json.loads(out)["by_run"]}
    assert (runs["run-n"]["run_name"], runs["run-n"]["manifest_path"], runs["run-n"]["manifest_sha256"]) == (
        "nightly-42",
        str(manifest),
        sha,
    )
    assert runs["run-old"]["run_name"] is None and runs["run-old"]["manifest_path"] is None
