"""The request ledger: what was submitted for each job key, written before and after each submit.

It lives in a database (klingflow.ledger.schema): by default a SQLite file in the state dir, next to
the upload cache (private directory; each write commits, so it survives a kill -9 of the writer); with
KLINGFLOW_DATABASE_URL set, a PostgreSQL database that workers on several machines share. It lets a
later run:
- reuse a result that was already paid for instead of paying again;
- resume polling a request that a crashed run submitted, by its request id;
- see that a crash happened between "submitting" and "submitted" (the only window in which a
  request may exist at fal without klingflow knowing its id) and settle it instead of resending.

Per-job locks with expiring, renewed leases keep two concurrent runs (on any machines) from submitting
the same job: a lock is a row taken by insert and taken over or renewed only by a compare-and-set on
its holder and lease, so of two contenders exactly one wins. A lock whose owner process is gone (same
host, pid not alive) or whose lease lapsed is taken over.
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

import sqlalchemy as sa
from pydantic import BaseModel, Field

from klingflow.ledger import schema
from klingflow.ledger.decide import JobState
from klingflow.ledger.schema import LedgerSettings, entries, locks
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
    earlier_requests: list[str] = Field(default_factory=list)  # the key's earlier attempts (same input): not this one
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
    """Persistent job-key → LedgerEntry map, namespaced by backend, with per-key locks.

    `directory` holds the SQLite ledger unless `url` (default: KLINGFLOW_DATABASE_URL) names a database.
    """

    def __init__(self, directory: str | Path, namespace: str, *, lease_s: float = 60.0, url: str | None = None) -> None:
        self.url = url or LedgerSettings.from_env(dict(os.environ)).url or schema.sqlite_url(directory)
        self._engine = schema.create_ledger_engine(self.url)
        schema.upgrade(self._engine, Path(directory).expanduser() if self.is_sqlite else None)
        self.namespace = namespace
        self.lease_s = lease_s
        self.token = uuid.uuid4().hex[:12]  # this ledger's identity as a lock owner (one per run)
        _open_tokens.add(self.token)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def where(self) -> str:
        """The ledger's database, fit for a log line (no password)."""
        return schema.safe_url(self.url)

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

    def _match(self, table: sa.Table, job_key: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.namespace == self.namespace, table.c.job_key == job_key)

    def get(self, job_key: str) -> LedgerEntry | None:
        with self._engine.begin() as conn:
            body = conn.execute(sa.select(entries.c.body).where(self._match(entries, job_key))).scalar_one_or_none()
        return LedgerEntry.model_validate_json(body) if body else None

    def has_result(self, job_key: str | None) -> bool:
        """Whether the key's output was already paid for and downloaded (a run reuses it, at no cost)."""
        entry = self.get(job_key) if job_key else None
        return entry is not None and entry.state is JobState.succeeded

    def put(self, entry: LedgerEntry) -> None:
        """Insert or replace the key's entry (update first; insert when there was none)."""
        values = {"body": entry.model_dump_json(), "updated_at": entry.updated_at}
        for attempt in range(2):
            try:
                with self._engine.begin() as conn:
                    changed = conn.execute(entries.update().where(self._match(entries, entry.job_key)).values(values))
                    if changed.rowcount == 0:
                        conn.execute(entries.insert().values(namespace=self.namespace, job_key=entry.job_key, **values))
                return
            except sa.exc.IntegrityError:  # another process inserted it between our update and insert
                if attempt:
                    raise

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
        query = sa.select(entries.c.body).where(entries.c.namespace == self.namespace).order_by(entries.c.updated_at)
        with self._engine.begin() as conn:
            return [LedgerEntry.model_validate_json(body) for body in conn.execute(query).scalars()]

    def try_lock(self, job_key: str, run_id: str) -> bool:
        """Take the job's lock if free or stale; renewing it when we already hold it."""
        mine, held = self.owner(run_id, self.lease_s), self.lock_holder(job_key)
        if held is None:
            return self._insert_lock(job_key, mine)
        if held.token != self.token and not held.is_stale(time.time()):
            return False
        return self._swap_lock(job_key, held, mine)

    def _insert_lock(self, job_key: str, mine: LockOwner) -> bool:
        """Take a free lock; False when another process inserted it first (the primary key decides)."""
        row = {"namespace": self.namespace, "job_key": job_key, "token": mine.token}
        try:
            with self._engine.begin() as conn:
                conn.execute(locks.insert().values(**row, lease_until=mine.lease_until, owner=mine.model_dump_json()))
        except sa.exc.IntegrityError:
            return False
        return True

    def _swap_lock(self, job_key: str, held: LockOwner, mine: LockOwner) -> bool:
        """Compare-and-set: replace `held` by `mine` only if the row still shows `held` (one contender wins)."""
        seen = sa.and_(locks.c.token == held.token, locks.c.lease_until == held.lease_until)
        values = {"token": mine.token, "lease_until": mine.lease_until, "owner": mine.model_dump_json()}
        with self._engine.begin() as conn:
            return conn.execute(locks.update().where(self._match(locks, job_key), seen).values(values)).rowcount == 1

    def unlock(self, job_key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(locks.delete().where(self._match(locks, job_key), locks.c.token == self.token))

    def lock_holder(self, job_key: str) -> LockOwner | None:
        with self._engine.begin() as conn:
            raw = conn.execute(sa.select(locks.c.owner).where(self._match(locks, job_key))).scalar_one_or_none()
        return LockOwner.model_validate_json(raw) if raw else None

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
        self._engine.dispose()

    def __enter__(self) -> RequestLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
