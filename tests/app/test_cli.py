"""`klingflow run` options map onto EditParams: one table, the field's defaults, help and choices."""

from __future__ import annotations

import pytest

from klingflow.app.cli import RUN_OPTIONS, build_parser, params_from_args
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
    }


def test_choices_come_from_the_enums(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _params("--too-long=stretch")
    assert "invalid choice: 'stretch' (choose from 'trim', 'reject')" in capsys.readouterr().err


def test_help_shows_each_fields_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3600.0)" in text and "(default: 900.0)" in text
