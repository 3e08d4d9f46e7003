"""In-process notifications from a running flow, for front-ends such as the CLI's progress bar.

Flow parameters must be serializable, so a callback cannot be one; a front-end running the flow in
the same process subscribes here instead. Listeners must be quick and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from klingflow.models import JobRecord

Listener = Callable[[JobRecord], None]
_listeners: list[Listener] = []
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunNotice:
    """A run's news for its front-end: a stop signal came (`signum`), or its report is on disk (`summary`, the
    flow's RunSummary) — the front-end then has what it needs even if Prefect's own bookkeeping fails after."""

    signum: int | None = None
    summary: object | None = None
    orchestrator_down: bool = False


RunListener = Callable[[RunNotice], None]
_run_listeners: list[RunListener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(job)` each time a job finishes; returns the unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def subscribe_run(listener: RunListener) -> Callable[[], None]:
    """Call `listener(notice)` when the run is told to stop and when its report is written."""
    _run_listeners.append(listener)
    return lambda: _run_listeners.remove(listener)


def job_finished(job: JobRecord) -> None:
    """Tell every listener that `job` reached its final state in this run."""
    _tell(_listeners, job)


def run_notice(notice: RunNotice) -> None:
    """Tell every run listener what happened to the run."""
    _tell(_run_listeners, notice)


def _tell(listeners: list, item: object) -> None:
    for listener in list(listeners):
        try:
            listener(item)
        except Exception:  # a broken front-end must not break the run
            log.exception("run listener failed")
