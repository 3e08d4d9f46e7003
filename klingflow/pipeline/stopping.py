"""SIGINT and SIGTERM stop a run cleanly, at any moment: what a terminal's Ctrl-C, systemd, Kubernetes and
a Prefect worker's cancel send.

Left to their defaults, SIGTERM kills the process mid-write and Prefect's bridge raises `TerminationSignal`
wherever the event loop happens to be (measured: a traceback, exit 1, and requests left running at fal). Here
the first signal is turned into a cancellation of the run's task, delivered where each job waits: every job
cancels what it has at fal and leaves the ledger saying where its money stands (klingflow.pipeline.job), the
report of what finished is written, and the handlers that were there before are back, so a second signal
stops the process at once. In a deployment's run SIGTERM stays Prefect's: its worker cancels a run by a
control message, then SIGTERM, and the run acknowledges the message only while Prefect's own handler is
installed (the flow reports what finished when Prefect's TerminationSignal reaches it, and the
on_cancellation hook covers the rest, klingflow.pipeline.cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(
    on_signal: Callable[[int], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """For the block: the first of `signals` calls `on_signal(signum)` on the event loop and cancels the
    current task; the handlers that were there before take any later one. Outside the main thread (where
    Python delivers signals) it changes nothing. The previous handlers are back when the block ends."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # the block's (Prefect's settings and run): not the interrupted code's
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is first:  # not if someone installed their own since
                signal.signal(sig, handler)

    def first(signum: int, _frame: Any) -> None:
        restore()  # a second signal: whatever the handler before did (stop at once)
        task.cancel()
        loop.call_soon_threadsafe(on_signal, signum, context=context)  # logging is unsafe in a signal handler

    for sig in signals:
        signal.signal(sig, first)
    try:
        yield
    finally:
        restore()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
