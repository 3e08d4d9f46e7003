"""In-memory counters (reset on restart) that tests and benchmarks assert on.

Thread-safe: the server loop writes, Simulator.counters() reads from the test's thread.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any


class _KeyGauge:
    """Live and peak numbers of one key's requests."""

    def __init__(self) -> None:
        self.submits = 0
        self.in_flight = 0  # submitted and not yet COMPLETED (IN_QUEUE + IN_PROGRESS)
        self.in_progress = 0
        self.max_in_flight = 0
        self.max_in_progress = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Counters:
    """Route calls, per-request calls, transfer volumes, injected faults and per-key concurrency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._by_request: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._faults: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._keys: defaultdict[str, _KeyGauge] = defaultdict(_KeyGauge)

    def call(self, kind: str, request_id: str | None = None) -> None:
        """Count one HTTP call of a route kind (and per request id for queue routes)."""
        with self._lock:
            self._calls[kind] += 1
            if request_id:
                self._by_request[request_id][kind] += 1

    def fault(self, kind: str, fault: str) -> None:
        """Count one injected fault, e.g. ("submit", "http_429")."""
        with self._lock:
            self._faults[f"{kind}.{fault}"] += 1

    def add(self, name: str, amount: int = 1) -> None:
        """Bump a total: uploads, upload_bytes, downloads, download_bytes, submits, billed..."""
        with self._lock:
            self._totals[name] += amount

    def submitted(self, key_id: str) -> None:
        """A request entered the queue."""
        with self._lock:
            gauge = self._keys[key_id]
            gauge.submits += 1
            gauge.in_flight += 1
            gauge.max_in_flight = max(gauge.max_in_flight, gauge.in_flight)

    def started(self, key_id: str) -> None:
        """A request went IN_PROGRESS."""
        with self._lock:
            gauge = self._keys[key_id]
            gauge.in_progress += 1
            gauge.max_in_progress = max(gauge.max_in_progress, gauge.in_progress)

    def finished(self, key_id: str, *, was_running: bool) -> None:
        """A request reached COMPLETED (any outcome)."""
        with self._lock:
            gauge = self._keys[key_id]
            gauge.in_flight -= 1
            if was_running:
                gauge.in_progress -= 1

    def reset_peaks(self) -> None:
        """Start every key's peaks from its live numbers (a benchmark measuring one run after another)."""
        with self._lock:
            for gauge in self._keys.values():
                gauge.max_in_flight, gauge.max_in_progress = gauge.in_flight, gauge.in_progress

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (the body of GET /_simulator/counters)."""
        with self._lock:
            return {
                "calls": dict(self._calls),
                "calls_by_request": {rid: dict(c) for rid, c in self._by_request.items()},
                "faults": dict(self._faults),
                "submits": self._totals["submits"],
                "uploads": self._totals["uploads"],
                "upload_bytes": self._totals["upload_bytes"],
                "downloads": self._totals["downloads"],
                "download_bytes": self._totals["download_bytes"],
                "billed": self._totals["billed"],
                "keys": {kid: g.as_dict() for kid, g in self._keys.items()},
                "totals": dict(self._totals),  # every total, also webhook_* and queue_full_rejections
            }
