"""`klingflow ledger check|rebuild` exit codes and messages, and a `klingflow run` that refuses a damaged ledger
in one line naming the file and the way forward (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klingflow.app.cli import main
from klingflow.ledger.schema import DATABASE_URL_ENV, ledger_file
from klingflow.ledger.store import LedgerEntry, RequestLedger
from klingflow.media.synth import make_clip

PAGE = 4096


def _ledger(state_dir: Path, entries: int = 60) -> Path:
    """A real ledger: `entries` succeeded jobs, the first with a bill still to report; its file."""
    with RequestLedger(state_dir / "requests", "simulator") as ledger:
        for i in range(entries):
            ledger.put(
                LedgerEntry(
                    job_key=f"key-{i:04d}",
                    state="succeeded" if i else "completed",
                    job_id=f"job{i}",
                    run_id="run-1",
                    backend="simulator",
                    updated_at=time.time(),
                    report_pending=i == 0,
                    error="x" * 400,
                )
            )
    return ledger_file(state_dir)


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 // PAGE * PAGE
    data[start : start + PAGE] = b"\xab" * PAGE
    path.write_bytes(bytes(data))


def test_check_of_a_healthy_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0; entries per state, bills pending report, no damaged rows."""
    _ledger(tmp_path / "state")
    assert main(["ledger", "check", "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out
    assert "simulator: 60 entries (1 completed, 59 succeeded)" in out
    assert "bills pending report: 1" in out
    assert "damaged rows: 0" in out
    assert main(["ledger", "check", "--state-dir", str(tmp_path / "state"), "--backend", "fal"]) == 0
    assert "no entries for fal" in capsys.readouterr().out


def test_check_without_a_ledger_and_the_default_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No ledger yet is not damage (exit 0); without --state-dir, KLINGFLOW_HOME's ledger is checked."""
    assert main(["ledger", "check"]) == 0
    out = capsys.readouterr().out
    assert "none yet" in out and str(ledger_file(os.environ["KLINGFLOW_HOME"])) in out


def test_check_and_rebuild_a_garbled_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check: exit 1, DAMAGED, the file and the rebuild command; rebuild: exit 0, the file moved aside, what was
    kept, that the next run adopts the rest; check again: exit 0."""
    state = tmp_path / "state"
    path = _ledger(state)
    _garble(path)
    assert main(["ledger", "check", "--state-dir", str(state)]) == 1
    out = capsys.readouterr().out
    assert f"request ledger {path}: DAMAGED" in out
    assert f"klingflow ledger rebuild --state-dir {state}" in out

    assert main(["ledger", "rebuild", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"moved the damaged ledger to {path}.damaged-" in out
    assert "kept " in out and "adopts from fal's request history" in out
    assert [p.name.startswith("ledger.sqlite.damaged-") for p in path.parent.iterdir()].count(True) == 1

    assert main(["ledger", "check", "--state-dir", str(state)]) == 0
    assert "healthy" in capsys.readouterr().out
    assert main(["ledger", "rebuild", "--state-dir", str(state)]) == 0
    assert "nothing to rebuild" in capsys.readouterr().out


def test_rebuild_refuses_a_postgresql_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With KLINGFLOW_DATABASE_URL naming PostgreSQL, rebuild says it is for the SQLite ledger (exit 2, no
    password); check of an unreachable database is one line, exit 2."""
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://team:s3cret@127.0.0.1:1/ledger")
    assert main(["ledger", "rebuild", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rebuild is for the SQLite ledger" in err and "s3cret" not in err
    assert main(["ledger", "check", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read" in err and "s3cret" not in err


def test_a_run_on_a_damaged_ledger_stops_in_one_line(tmp_path: Path) -> None:
    """`klingflow run` (a dry run: nothing would be sent anyway) on a garbled ledger: exit 2, one line naming the
    file and `klingflow ledger rebuild`, no traceback, and Prefect never started."""
    state = tmp_path / "state"
    path = _ledger(state)
    _garble(path)
    clip = make_clip(tmp_path / "clip.mp4", seconds=3, width=640, height=360)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "prompt": "An edit of @Video1", "video": str(clip)}) + "\n")
    command = [sys.executable, "-m", "klingflow.app.cli", "run", str(manifest), "--state-dir", str(state)]
    done = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and f"klingflow ledger rebuild --state-dir {state}" in lines[0]
    assert "Traceback" not in done.stderr
