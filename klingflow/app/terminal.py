"""The terminal of a `klingflow run`: Prefect's log lines above the progress bar, never through it.

Prefect's console handlers print through their own rich Console on the stream they were built with,
so their lines and a rich progress bar overwrite each other. For the run, `logs_above(console)` points
those handlers at the progress bar's console (rich then prints every line above the bar) and filters
the per-job chatter (detail lines, each task run's "Finished in state Completed()") unless `verbose`;
the run log at the Prefect API gets every line either way. Put back as it was when the block ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

from klingflow.detail import is_detail

# Prefect's own lines when its server is gone: every undelivered event, whole (a screenful each), every 7 s
_SERVER_GONE = ("failed to process item", "Unable to connect to", "Still processing items")


class _Chatter(logging.Filter):
    """Drops what only the run log needs: detail lines, task runs finishing without a problem, and Prefect's
    repeats of its server being unreachable (klingflow says that once, in its own words)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_detail(record):
            return False
        if record.name.startswith(("prefect.events", "prefect._internal")) and any(
            part in str(record.msg) for part in _SERVER_GONE
        ):
            return False
        routine = record.levelno < logging.WARNING and record.name.startswith("prefect.task_runs")
        return not (routine and str(record.msg).startswith("Finished in state Completed"))


def _console_handlers() -> list[PrefectConsoleHandler]:
    named = (v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))
    loggers = [logging.getLogger(), *named]
    found: dict[int, PrefectConsoleHandler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                found[id(handler)] = handler
    return list(found.values())


def _internal_handlers() -> list[logging.Handler]:
    """The plain stderr handlers of Prefect's internals (its events and services), which print past the bar."""
    return [h for name in ("prefect._internal", "prefect.events") for h in logging.getLogger(name).handlers]


@contextmanager
def logs_above(console: Console, *, verbose: bool = False) -> Iterator[None]:
    """Prefect's console lines go through `console` (above its live progress bar) for the block.

    Prefect configures logging when its flow machinery is imported: import the flow before entering.
    """
    handlers = _console_handlers()
    saved = [(h, h.console) for h in handlers]
    chatter = _Chatter()
    quiet = [*handlers, *_internal_handlers()] if not verbose else []
    for handler in handlers:
        handler.console = console
    for handler in quiet:
        handler.addFilter(chatter)
    try:
        yield
    finally:
        for handler, original in saved:
            handler.console = original
        for handler in quiet:
            handler.removeFilter(chatter)
