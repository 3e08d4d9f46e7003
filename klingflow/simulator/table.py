"""The persisted request table: state_dir/requests/<request_id>.json, rewritten atomically per change."""

from __future__ import annotations

import os
from pathlib import Path

from klingflow.simulator.models import RequestRecord


class RequestTable:
    """JSON file per request; small, crash-safe (write temp + rename), readable by hand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, record: RequestRecord) -> None:
        """Persist one record atomically."""
        path = self.directory / f"{record.request_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)

    def delete(self, request_id: str) -> None:
        """Forget a record (its result expired)."""
        (self.directory / f"{request_id}.json").unlink(missing_ok=True)

    def load_all(self) -> list[RequestRecord]:
        """Every stored record, oldest submission first (unreadable files are skipped)."""
        records = []
        for path in self.directory.glob("*.json"):
            try:
                records.append(RequestRecord.model_validate_json(path.read_text()))
            except ValueError:
                continue
        return sorted(records, key=lambda r: r.submitted_at)
