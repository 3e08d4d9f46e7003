"""The request ledger: what was submitted for each job key, written before and after each submit.

It lives next to the upload cache (diskcache, JSON values, private directory; SQLite underneath, so
a write survives a kill -9 of the writer) and lets a later run:
- reuse a result that was already paid for instead of paying again;
- resume polling a request that a crashed run submitted, by its request id;
- see that a crash happened between "submitting" and "submitted" (the only window in which a
  request may exist at fal without klingflow knowing its id) and settle it instead of resending.

Per-job locks with expiring, renewed leases keep two concurrent runs from submitting the same job;
a lock whose owner process is gone (same host, pid not alive) or whose lease lapsed is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import BaseModel

from klingflow.cachedir import open_json_cache
from klingflow.ledger.decide import JobState
from klingflow.models import PaidResult

_open_tokens: set[str] = set()  # tokens of the ledgers open in this process (their runs are going on)


class LockOwner(BaseModel):
    """Who holds a job's lock, or owes a bill to its report: a run on a host, for a lease."""

    host: str
    pid: int
    token: str
    run_id: str
    lease_until: float

    def is_stale(self, now: float) -> bool:
        """Lease lapsed, or the owner is gone: its process left this host, or (this process) its run ended."""
        if now > self.lease_until:
            return True
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.token not in _open_tokens
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class LedgerEntry(PaidResult):
    """One job key's request history, as the latest write left it (states: klingflow.ledger.decide)."""

    job_key: str
    state: JobState
    job_id: str
    run_id: str
    backend: str
    request_id: str | None = None
    payload_sha256: str | None = None  # hash of the input being submitted, to find it in fal's history
    submitting_at: float | None = None  # epoch seconds, written before the POST
    submitted_at: float | None = None
    updated_at: float
    report_pending: bool = False  # billed, and no report carries the bill yet
    bill_owner: LockOwner | None = None  # the run whose report will carry it (if it dies first, the next one will)
    billed_in_run: str | None = None  # the run whose report carries this bill
    cancel_requested_at: float | None = None  # when fal acknowledged a cancel (None: send it again)
    fal_status: int | None = None  # HTTP status fal ended the request with (failed_at_fal)
    error: str | None = None


class RequestLedger:
    """Persistent job-key → LedgerEntry map, namespaced by backend, with per-key locks."""

    def __init__(self, directory: str | Path, namespace: str, *, lease_s: float = 60.0) -> None:
        self._cache = open_json_cache(directory)
        self.namespace = namespace
        self.lease_s = lease_s
        self.token = uuid.uuid4().hex[:12]  # this ledger's identity as a lock owner (one per run)
        _open_tokens.add(self.token)

    def owner(self, run_id: str, lease_s: float) -> LockOwner:
        """This run as the owner of a lock or a bill, for `lease_s` seconds."""
        return LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            token=self.token,
            run_id=run_id,
            lease_until=time.time() + lease_s,
        )

    def carries_bill(self, entry: LedgerEntry) -> bool:
        """Whether this run's report must carry the entry's bill: none has, and its owner run is gone."""
        if not entry.report_pending:
            return False
        owner = entry.bill_owner
        return owner is None or owner.token == self.token or owner.is_stale(time.time())

    def _key(self, job_key: str) -> str:
        return f"{self.namespace}|entry|{job_key}"

    def _lock_key(self, job_key: str) -> str:
        return f"{self.namespace}|lock|{job_key}"

    def get(self, job_key: str) -> LedgerEntry | None:
        raw = self._cache.get(self._key(job_key))
        return LedgerEntry.model_validate(raw) if raw else None

    def put(self, entry: LedgerEntry) -> None:
        self._cache.set(self._key(entry.job_key), entry.model_dump(mode="json"))

    def write(self, entry: LedgerEntry, **fields: object) -> LedgerEntry:
        """Write `entry` with `fields` changed, validated (unknown fields and wrong types raise)."""
        merged = LedgerEntry.model_validate({**entry.model_dump(), **fields, "updated_at": time.time()})
        self.put(merged)
        return merged

    def update(self, job_key: str, **fields: object) -> LedgerEntry:
        """Merge `fields` into the key's entry (which must exist), validated, and write it."""
        current = self.get(job_key)
        if current is None:
            raise KeyError(job_key)
        return self.write(current, **fields)

    def entries(self) -> list[LedgerEntry]:
        prefix = f"{self.namespace}|entry|"
        return [
            LedgerEntry.model_validate(self._cache[k])
            for k in list(self._cache.iterkeys())
            if isinstance(k, str) and k.startswith(prefix) and k in self._cache
        ]

    def try_lock(self, job_key: str, run_id: str) -> bool:
        """Take the job's lock if free or stale; renewing it when we already hold it."""
        key, now = self._lock_key(job_key), time.time()
        mine = LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            token=self.token,
            run_id=run_id,
            lease_until=now + self.lease_s,
        )
        with self._cache.transact():
            raw = self._cache.get(key)
            if raw is not None:
                held = LockOwner.model_validate(raw)
                if held.token != self.token and not held.is_stale(now):
                    return False
            self._cache.set(key, mine.model_dump())
            return True

    def unlock(self, job_key: str) -> None:
        key = self._lock_key(job_key)
        with self._cache.transact():
            raw = self._cache.get(key)
            if raw is not None and LockOwner.model_validate(raw).token == self.token:
                self._cache.delete(key)

    def lock_holder(self, job_key: str) -> LockOwner | None:
        raw = self._cache.get(self._lock_key(job_key))
        return LockOwner.model_validate(raw) if raw else None

    @asynccontextmanager
    async def locked(self, job_key: str, run_id: str, *, poll_s: float = 0.5) -> AsyncIterator[None]:
        """Hold the job's lock for the block (waiting for another live holder), renewing the lease."""
        while not self.try_lock(job_key, run_id):
            await asyncio.sleep(poll_s)
        renew = asyncio.create_task(self._renew(job_key, run_id))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            self.unlock(job_key)

    async def _renew(self, job_key: str, run_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            self.try_lock(job_key, run_id)

    def mark_reported(self, job_keys: list[str], run_id: str) -> None:
        """This run's report (written) carries these keys' bills: later rows of them cost nothing."""
        for key in job_keys:
            entry = self.get(key)
            if entry is not None and entry.report_pending and entry.bill_owner and entry.bill_owner.token == self.token:
                self.write(entry, report_pending=False, billed_in_run=run_id, bill_owner=None)

    def close(self) -> None:
        _open_tokens.discard(self.token)
        self._cache.close()

    def __enter__(self) -> RequestLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
