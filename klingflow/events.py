"""In-process notifications from a running flow, for front-ends such as the CLI's progress bar.

Flow parameters must be serializable, so a callback cannot be one; a front-end running the flow in
the same process subscribes here instead. Listeners must be quick and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from klingflow.models import JobRecord

Listener = Callable[[JobRecord], None]
_listeners: list[Listener] = []
log = logging.getLogger(__name__)


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(job)` each time a job finishes; returns the unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def job_finished(job: JobRecord) -> None:
    """Tell every listener that `job` reached its final state in this run."""
    for listener in list(_listeners):
        try:
            listener(job)
        except Exception:  # a broken front-end must not break the run
            log.exception("progress listener failed")
