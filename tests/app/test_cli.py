"""`klingflow run` options map onto EditParams: one table, the field's defaults, help and choices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from klingflow import __version__
from klingflow.app.cli import RUN_OPTIONS, build_parser, main, params_from_args
from klingflow.models import EditParams


def _params(*options: str) -> EditParams:
    return params_from_args(build_parser().parse_args(["run", "m.csv", *options]))


def test_no_options_give_the_parameters_defaults() -> None:
    assert _params().model_dump(exclude={"state_dir"}) == EditParams(manifest="m.csv").model_dump(exclude={"state_dir"})


def test_every_option_sets_its_field() -> None:
    params = _params(
        "--backend=simulator",
        "--concurrency=7",
        "--out=o",
        "--report-dir=r",
        "--state-dir=s",
        "--timeout=12.5",
        "--poll-interval=0.25",
        "--poll-max-interval=3",
        "--too-long=reject",
        "--too-short=pad",
        "--extreme-aspect=pad",
        "--max-budget=9.5",
        "--dry-run",
        "--force",
        "--concurrency-limit=team-a",
        "--time-scale=0.5",
        "--settle-window=60",
        "--fetch-timeout=30",
        "--estimate-wait=2.5",
        "--task-runs-max=5",
        "--input-root=in/a",
        "--input-root=in/b",
        "--input-host=cdn.example.com",
        "--allow-private-addresses",
        "--name=batch-7",
        "--fail-on-job-failure",
    )
    assert params.model_dump(mode="json", include=set(RUN_OPTIONS.values())) == {
        "backend": "simulator",
        "max_concurrency": 7,
        "output_dir": "o",
        "report_dir": "r",
        "state_dir": "s",
        "job_timeout_s": 12.5,
        "poll_interval_s": 0.25,
        "poll_max_interval_s": 3.0,
        "too_long": "reject",
        "too_short": "pad",
        "extreme_aspect": "pad",
        "max_budget_usd": 9.5,
        "dry_run": True,
        "force": True,
        "concurrency_limit": "team-a",
        "simulator_time_scale": 0.5,
        "settle_window_s": 60.0,
        "input_fetch_timeout_s": 30.0,
        "estimate_wait_s": 2.5,
        "job_task_runs_max": 5,
        "input_roots": ["in/a", "in/b"],
        "input_hosts": ["cdn.example.com"],
        "allow_private_addresses": True,
        "run_name": "batch-7",
        "fail_run_on_job_failure": True,
    }


def test_a_flag_not_given_leaves_a_run_dependent_default() -> None:
    """Private addresses: unset on the command line means "the run decides" (allowed locally), not False."""
    assert _params().allow_private_addresses is None


def test_choices_come_from_the_enums(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _params("--too-long=stretch")
    assert "invalid choice: 'stretch' (choose from 'trim', 'reject')" in capsys.readouterr().err


def test_help_shows_each_fields_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3600.0)" in text and "(default: 900.0)" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"klingflow {__version__}"


def test_bad_values_are_one_line_naming_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m.csv", "--concurrency", "0", "--timeout", "-1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "klingflow: --concurrency 0: input should be greater than or equal to 1; "
        "--timeout -1.0: input should be greater than 0"
    )


def test_fal_without_a_key_stops_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key anywhere (no FAL_KEY, no Prefect server that could hold the block): exit 2 at once; a dry run only
    warns (then goes on: here to the empty manifest, which stops it before Prefect starts)."""
    monkeypatch.delenv("FAL_KEY")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt,video\n")
    assert main(["run", str(manifest), "--backend", "fal"]) == 2
    assert "--backend fal needs a fal key: set FAL_KEY" in capsys.readouterr().err
    assert main(["run", str(manifest), "--backend", "fal", "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the terminal wraps lines
    assert "warning: --backend fal needs a fal key" in err and "a real run would stop here" in err
    assert "the manifest has no rows" in err
    assert not (Path(os.environ["KLINGFLOW_HOME"]) / "prefect-server").exists()  # no Prefect server was started
