"""Append-only billing ledger (state_dir/ledger.jsonl): one JSON line per billed request.

Each line is written with a single O_APPEND write and fsync'd, so it survives a crash right after
billing and never interleaves with another writer. A request id is billed at most once, also
across restarts (the billed ids are re-read at start-up).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from klingflow.simulator.models import LedgerEntry


class Ledger:
    """The ledger file plus the set of request ids it already bills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._billed = {entry.request_id for entry in self.entries()}

    def bill(self, entry: LedgerEntry) -> bool:
        """Append an entry unless its request is already billed; returns whether it was appended."""
        line = (entry.model_dump_json() + "\n").encode()
        with self._lock:
            if entry.request_id in self._billed:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._billed.add(entry.request_id)
        return True

    def entries(self) -> list[LedgerEntry]:
        """Every entry, in billing order (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return []
        entries = []
        for raw in self.path.read_text().splitlines():
            if raw.strip():
                try:
                    entries.append(LedgerEntry.model_validate_json(raw))
                except ValueError:
                    continue
        return entries
