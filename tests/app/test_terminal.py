"""The run's terminal: Prefect's console lines go through the progress bar's console; chatter only with -v."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

import flows.edit_videos  # noqa: F401  (configures Prefect's logging, as a run does)
from klingflow.app.terminal import _console_handlers, _internal_handlers, logs_above
from klingflow.detail import DETAIL

pytestmark = pytest.mark.usefixtures("prefect_server")  # Prefect's API log handler has a server to talk to


@pytest.fixture
def loggers() -> tuple[logging.Logger, logging.Logger]:
    flow_log, task_log = logging.getLogger("prefect.flow_runs"), logging.getLogger("prefect.task_runs")
    levels = flow_log.level, task_log.level
    flow_log.setLevel(logging.INFO)
    task_log.setLevel(logging.INFO)
    yield flow_log, task_log
    flow_log.setLevel(levels[0])
    task_log.setLevel(levels[1])


@pytest.mark.parametrize("verbose", [False, True])
def test_lines_go_above_the_bar_and_chatter_only_when_verbose(loggers, verbose: bool) -> None:
    flow_log, task_log = loggers
    handlers = _console_handlers()
    before = [h.console for h in handlers]
    out = io.StringIO()
    flow, task = {"flow_run_name": "f", "flow_run_id": "1"}, {"task_run_name": "t", "task_run_id": "2"}
    with logs_above(Console(file=out, width=200), verbose=verbose):
        flow_log.info("estimate: 3 job(s)", extra=flow)
        flow_log.info("job1: submitted as request r-1", extra=flow | DETAIL)
        task_log.info("Finished in state Completed()", extra=task)
        task_log.warning("row 2 (b): download failed", extra=task)
        gone = logging.getLogger("prefect._internal.concurrency").makeRecord(
            "prefect._internal.concurrency",
            logging.ERROR,
            __file__,
            1,
            "Service 'EventsWorker' failed to process item Event(occurred=...)",
            (),
            None,
        )  # a dead server's every event, printed by Prefect's own stderr handler
        printed = [h.filter(gone) for h in _internal_handlers()]
    text = out.getvalue()
    assert "estimate: 3 job(s)" in text and "row 2 (b): download failed" in text
    assert ("submitted as request r-1" in text) is verbose
    assert ("Finished in state Completed()" in text) is verbose
    assert printed and all(printed) is verbose
    assert [h.console for h in handlers] == before and not any(h.filters for h in handlers)
