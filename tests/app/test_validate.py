"""`klingflow validate`: every row checked as the run checks it, with no Prefect and no fal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from klingflow.app.cli import main
from klingflow.media.synth import make_clip


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """Three rows: a compliant clip, a clip the run must trim, a file that is not there."""
    make_clip(tmp_path / "ok.mp4", seconds=3, width=1280, height=720)
    make_clip(tmp_path / "long.mp4", seconds=12, width=1280, height=720)
    manifest = tmp_path / "batch.csv"
    manifest.write_text(
        "id,prompt,video\nok,Make @Video1 sunny,ok.mp4\nlong,Make @Video1 rainy,long.mp4\ngone,Edit @Video1,gone.mp4\n"
    )
    return manifest


def test_every_row_is_checked_and_priced_without_prefect(batch: Path, tmp_path: Path) -> None:
    """JSON names each row's verdict, the work its video needs and its estimate; a bad row fails alone (exit 1);
    no Prefect server is started (none is reachable: PREFECT_API_URL names a closed port)."""
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "KLINGFLOW_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "klingflow.app.cli",
            "validate",
            str(batch),
            "--format",
            "json",
            "--backend",
            "simulator",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    rows = {r["job_id"]: r for r in result["rows"]}
    assert {j: r["ready"] for j, r in rows.items()} == {"ok": True, "long": True, "gone": False}
    assert rows["ok"]["actions"] == ["passthrough"] and rows["ok"]["seconds"] == 3
    assert "trim" in rows["long"]["actions"] and rows["long"]["seconds"] == 10
    assert rows["gone"]["error"].startswith("row 3 (gone), file ") and "file not found" in rows["gone"]["error"]
    assert result["estimate"]["to_pay"] == 2 and result["estimate"]["failed"] == 1
    assert result["estimate"]["total_usd"] == pytest.approx(13 * 0.336)
    assert result["ready"] is False
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["preprocessed", "pricing", "requests"]


def test_a_ready_manifest_exits_0_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_clip(tmp_path / "ok.mp4", seconds=3, width=1280, height=720)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "prompt": "Make @Video1 sunny", "video": "ok.mp4"}) + "\n")
    assert main(["validate", str(tmp_path / "m.jsonl"), "--backend", "simulator"]) == 0
    out = capsys.readouterr().out
    assert "every row is ready" in out and "estimate: 1 job(s) to pay for" in out and "$1.01" in out


def test_the_run_options_apply(batch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--too-long reject` and `--input-root` change the verdict as they would change the run's."""
    args = ["validate", str(batch), "--format", "json", "--backend", "simulator", "--too-long", "reject"]
    assert main([*args, "--input-root", str(tmp_path / "elsewhere")]) == 2  # the manifest itself is outside
    assert "is outside the allowed input folders" in capsys.readouterr().err
    assert main(args) == 1
    rows = {r["job_id"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert not rows["long"]["ready"] and "10" in rows["long"]["error"]


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: p.write_text("id,prompt,video\n"), "the manifest has no rows"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_an_unreadable_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], write, reason) -> None:
    manifest = tmp_path / "m.csv"
    write(manifest)
    assert main(["validate", str(manifest)]) == 2
    assert reason in capsys.readouterr().err
