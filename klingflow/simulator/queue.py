"""fal's queue semantics: per-key FIFO, at most `concurrency_per_key` IN_PROGRESS per key, the rest
IN_QUEUE with a position (never rejected), cancel, start timeouts, result expiry, billing.

Money follows fal's documented worst case: a cancel of a running request is only a request (at
FaultConfig.cancel_running_completes_rate it is ignored and the job completes, billed), and a 422
may be billed (FaultConfig.invalid_billed_rate).

All state lives on the server's event loop; only the CPU work of a job runs in worker threads.
A record is persisted on every state change, so a restart on the same state_dir re-queues what was
queued or running and keeps serving completed results until they expire.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any, Literal

import httpx

from klingflow.endpoint import ENDPOINT_ID, billable_seconds
from klingflow.simulator.config import SimulatorConfig
from klingflow.simulator.counters import Counters
from klingflow.simulator.faults import FaultInjector
from klingflow.simulator.jobs import JobContext, run_job
from klingflow.simulator.ledger import Ledger
from klingflow.simulator.models import LedgerEntry, LogLine, Outcome, RequestRecord, utcnow
from klingflow.simulator.outcomes import JobResult, cancelled, failed, start_timeout
from klingflow.simulator.pricing import key_price
from klingflow.simulator.storage import Storage
from klingflow.simulator.table import RequestTable

SWEEP_INTERVAL_S = 0.1
UNPROBED_INVALID_BILLED_S = 3  # a billed 422 whose video was never probed: the endpoint's minimum length
CancelReply = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


class QueueManager:
    """Owns every request record and the jobs processing them."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        storage: Storage,
        table: RequestTable,
        ledger: Ledger,
        counters: Counters,
        faults: FaultInjector,
        executor: Executor,
    ) -> None:
        self.config = config
        self.storage, self.table, self.ledger = storage, table, ledger
        self.counters, self.faults, self.executor = counters, faults, executor
        self.records: dict[str, RequestRecord] = {}
        self._waiting: defaultdict[str, deque[str]] = defaultdict(deque)
        self._running: defaultdict[str, int] = defaultdict(int)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._http: httpx.AsyncClient | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[RequestRecord], None]] = []  # told of every completed request

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore persisted requests and begin processing."""
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)
        for rec in self.table.load_all():
            self._restore(rec)
        for key in list(self._waiting):
            self._dispatch(key)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop every job; running ones stay IN_PROGRESS on disk and are re-queued on restart."""
        if self._sweeper:
            self._sweeper.cancel()
        for event in self._cancels.values():
            event.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http:
            await self._http.aclose()

    def _restore(self, rec: RequestRecord) -> None:
        if rec.status == "COMPLETED":
            if self._expired(rec):
                self.table.delete(rec.request_id)
            else:
                self.records[rec.request_id] = rec
            return
        rec.status, rec.started_at, rec.logs = "IN_QUEUE", None, [LogLine(message="Re-queued after a restart")]
        self.records[rec.request_id] = rec
        self._waiting[rec.key_id].append(rec.request_id)
        self.counters.submitted(rec.key_id)
        self.table.save(rec)

    # --- API --------------------------------------------------------------------------------------
    def submit(
        self,
        key_id: str,
        payload: Any,
        start_timeout_s: float | None,
        *,
        store_io: bool = True,
        tags: dict[str, str] | None = None,
    ) -> RequestRecord:
        """Accept a request (never rejected) and start it if the key has a free slot."""
        prompt = payload.get("prompt") if isinstance(payload, dict) else None
        rec = RequestRecord(
            request_id=str(uuid.uuid4()),
            endpoint=ENDPOINT_ID,
            key_id=key_id,
            input=payload,
            start_timeout_s=start_timeout_s,
            store_io=store_io,
            tags=tags or {},
            fault=self.faults.job_fault(prompt if isinstance(prompt, str) else ""),
        )
        self.records[rec.request_id] = rec
        self._waiting[key_id].append(rec.request_id)
        self.table.save(rec)
        self.counters.submitted(key_id)
        self.counters.add("submits")
        self._dispatch(key_id)
        return rec

    def get(self, request_id: str) -> RequestRecord | None:
        """A live record (None if unknown or its result expired)."""
        rec = self.records.get(request_id)
        if rec is not None and self._expired(rec):
            self._forget(rec)
            return None
        return rec

    def queue_position(self, rec: RequestRecord) -> int:
        """0-based position among every waiting request of the endpoint, whoever sent it (fal: one
        queue per endpoint): the number of requests still waiting that were submitted before it."""
        if rec.status != "IN_QUEUE":
            return 0
        return sum(
            1
            for waiting in self._waiting.values()
            for other in waiting
            if (self.records[other].submitted_at, other) < (rec.submitted_at, rec.request_id)
        )

    def waiting_count(self) -> int:
        """Requests of the endpoint waiting to start (all keys)."""
        return sum(len(waiting) for waiting in self._waiting.values())

    def has_free_slot(self, key_id: str) -> bool:
        """True when a request of this key would start at once."""
        return not self._waiting[key_id] and self._running[key_id] < self.config.concurrency_per_key

    def cancel(self, rec: RequestRecord) -> CancelReply:
        """Cancel a queued request (never processed) or a running one (stopped, not billed, unless the
        cancel is ignored: then it runs to completion and is billed, as fal allows mid-processing)."""
        if rec.status == "COMPLETED":
            return "ALREADY_COMPLETED"
        if rec.status == "IN_QUEUE":
            self._waiting[rec.key_id].remove(rec.request_id)
        elif self.faults.cancel_ignored():
            self.counters.fault("job", "cancel_ignored")
            self._log(rec, "Cancellation requested; the request was already processing and will complete")
            return "CANCELLATION_REQUESTED"
        else:
            self._cancels[rec.request_id].set()
            self._tasks[rec.request_id].cancel()
        self._log(rec, "Request cancelled by the caller")
        self._complete(rec, cancelled())
        return "CANCELLATION_REQUESTED"

    def views(self) -> list[RequestRecord]:
        """Every live record (for GET /_simulator/requests)."""
        return list(self.records.values())

    # --- scheduling ------------------------------------------------------------------------------
    def _dispatch(self, key_id: str) -> None:
        waiting = self._waiting[key_id]
        while waiting and self._running[key_id] < self.config.concurrency_per_key:
            rec = self.records[waiting.popleft()]
            if self._start_deadline_passed(rec):
                self._complete(rec, start_timeout())
                continue
            self._start(rec)

    def _start(self, rec: RequestRecord) -> None:
        rec.status, rec.started_at = "IN_PROGRESS", utcnow()
        self._running[rec.key_id] += 1
        self.counters.started(rec.key_id)
        self._log(rec, "Request started")
        self.table.save(rec)
        self._cancels[rec.request_id] = threading.Event()
        self._tasks[rec.request_id] = asyncio.create_task(self._run(rec))

    async def _run(self, rec: RequestRecord) -> None:
        assert self._http is not None
        ctx = JobContext(config=self.config, storage=self.storage, http=self._http, executor=self.executor)
        try:
            result = await run_job(
                rec, ctx, lambda msg, level="INFO": self._log(rec, msg, level), self._cancels[rec.request_id]
            )
        except asyncio.CancelledError:
            raise  # cancel() or stop() own the record from here
        except Exception as exc:  # noqa: BLE001 - a simulator bug must not wedge the key's queue
            result = failed(f"Simulator error: {exc.__class__.__name__}: {exc}")
        self._complete(rec, result)

    def _complete(self, rec: RequestRecord, result: JobResult) -> None:
        was_running = rec.status == "IN_PROGRESS"
        now = utcnow()
        rec.status, rec.outcome, rec.completed_at = "COMPLETED", result.outcome, now
        rec.output, rec.error, rec.error_type = result.output, result.error, result.error_type
        rec.error_status, rec.error_body = result.error_status, result.error_body
        if rec.started_at is not None:
            rec.inference_time_s = (now - rec.started_at).total_seconds()
        if (seconds := self._billable(result)) is not None:
            self._bill(rec, seconds)
        self.table.save(rec)
        self.counters.finished(rec.key_id, was_running=was_running)
        self._tasks.pop(rec.request_id, None)
        self._cancels.pop(rec.request_id, None)
        if was_running:
            self._running[rec.key_id] -= 1
            self._dispatch(rec.key_id)
        for listener in self.listeners:
            listener(rec)

    def _billable(self, result: JobResult) -> int | None:
        """Seconds to bill for how a request ended, or None: outputs always, 422s at invalid_billed_rate."""
        if result.outcome is Outcome.OK and result.output is not None:
            return billable_seconds(result.output.duration_s)
        if result.outcome is Outcome.INVALID and self.faults.invalid_billed():
            self.counters.fault("job", "invalid_billed")
            if result.input_duration_s is None:
                return UNPROBED_INVALID_BILLED_S
            return billable_seconds(result.input_duration_s)
        return None

    def _bill(self, rec: RequestRecord, seconds: int) -> None:
        rec.billed_seconds = seconds
        assert rec.completed_at is not None
        price = key_price(self.config, rec.key_id, rec.endpoint)
        subtotal, total = price.charge(seconds)
        entry = LedgerEntry(
            request_id=rec.request_id,
            endpoint=rec.endpoint,
            key_id=rec.key_id,
            input=rec.input,
            billed_seconds=seconds,
            cost_usd=total,
            unit_price=price.list_price,
            percent_discount=price.percent_discount,
            cost_subtotal=subtotal,
            tags=rec.tags,
            submitted_at=rec.submitted_at,
            started_at=rec.started_at,
            completed_at=rec.completed_at,
        )
        if self.ledger.bill(entry):
            self.counters.add("billed")

    # --- time-driven transitions -------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self._sweep()

    def _sweep(self) -> None:
        """Time out queued requests past their start deadline; drop expired results."""
        for rec in list(self.records.values()):
            if rec.status == "IN_QUEUE" and self._start_deadline_passed(rec):
                self._waiting[rec.key_id].remove(rec.request_id)
                self._complete(rec, start_timeout())
            elif self._expired(rec):
                self._forget(rec)

    def _start_deadline_passed(self, rec: RequestRecord) -> bool:
        if rec.start_timeout_s is None:
            return False
        return utcnow() - rec.submitted_at > timedelta(seconds=rec.start_timeout_s)

    def _expired(self, rec: RequestRecord) -> bool:
        if rec.status != "COMPLETED" or rec.completed_at is None:
            return False
        return utcnow() - rec.completed_at > timedelta(seconds=self.config.result_retention_s)

    def _forget(self, rec: RequestRecord) -> None:
        self.records.pop(rec.request_id, None)
        self.table.delete(rec.request_id)

    @staticmethod
    def _log(rec: RequestRecord, message: str, level: str = "INFO") -> None:
        rec.logs.append(LogLine(message=message, level=level))
