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

Every operation is one transaction run by `_transaction`, which repeats it through a database blip (a
dropped or refused connection, a restarting PostgreSQL, a busy SQLite file) for up to `retry_s` seconds, so
a blip costs a job nothing; then it raises LedgerUnavailable. A repeated transaction must not change its
answer: writes are idempotent, and a compare-and-set whose commit may have landed before the connection
dropped re-reads the row and counts "it shows my new owner" as won. A damaged SQLite file raises
LedgerDamaged, naming the file and `klingflow ledger rebuild`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from klingflow.errors import LedgerDamaged, LedgerUnavailable
from klingflow.ledger import schema
from klingflow.ledger.decide import JobState
from klingflow.ledger.meaning import CancelReason
from klingflow.ledger.schema import LedgerSettings, entries, locks
from klingflow.models import PaidResult

_open_tokens: set[str] = set()  # tokens of the ledgers open in this process (their runs are going on)
log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_S = 30.0  # a PostgreSQL restart takes about a second, a failover tens: longer is an outage, not a blip
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 2.0
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_blip(exc: BaseException) -> bool:
    """Whether a database error passes if the same transaction is repeated: a dropped, refused or invalidated
    connection, a server starting or shutting down (PostgreSQL), a busy file (SQLite)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, sqlite3.Error):  # SQLite's other operational errors (no such table...) stay errors
        return isinstance(exc.orig, sqlite3.OperationalError) and ("locked" in str(exc.orig) or "busy" in str(exc.orig))
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


def is_damage(exc: BaseException) -> bool:
    """Whether a SQLite error says the file itself is damaged (malformed, or not a database at all)."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if not isinstance(orig, sqlite3.DatabaseError):
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(orig) or "not a database" in str(orig)


def _first_line(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


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
    cancel_reason: CancelReason | None = None  # why the cancel was sent (None: no cancel, or a ledger from before)
    fal_status: int | None = None  # HTTP status fal ended the request with (failed_at_fal)
    error: str | None = None


class RequestLedger:
    """Persistent job-key → LedgerEntry map, namespaced by backend, with per-key locks.

    `directory` holds the SQLite ledger unless `url` (default: KLINGFLOW_DATABASE_URL) names a database.
    Opening a SQLite ledger checks its file (`PRAGMA quick_check`): a damaged one raises LedgerDamaged
    before a run relies on it. Each operation is retried through a database blip for `retry_s` seconds.
    """

    def __init__(
        self,
        directory: str | Path,
        namespace: str,
        *,
        lease_s: float = 60.0,
        url: str | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        self.url = url or LedgerSettings.from_env(dict(os.environ)).url or schema.sqlite_url(directory)
        self.retry_s = retry_s
        self._engine = schema.create_ledger_engine(self.url)
        try:
            legacy = Path(directory).expanduser() if self.is_sqlite else None
            self._retrying(lambda: schema.upgrade(self._engine, legacy))
            if self.is_sqlite:
                self._transaction(self._quick_check)
        except BaseException:
            self._engine.dispose()
            raise
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

    def _retrying(self, work: Callable[[], T]) -> T:
        """`work()`, repeated with backoff while it fails by a blip (is_blip), for up to `retry_s` seconds."""
        deadline, delay = time.monotonic() + self.retry_s, FIRST_DELAY_S
        while True:
            try:
                return work()
            except (sa.exc.DBAPIError, sqlite3.DatabaseError) as exc:
                if is_damage(exc) and (path := schema.sqlite_file(self.url)):
                    raise LedgerDamaged(str(path), _first_line(exc), remedy=schema.rebuild_remedy(path)) from None
                if not is_blip(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    todo = (
                        "another process holds its write lock: find the stuck one"
                        if self.is_sqlite
                        else f"check that it is running and reachable ({schema.DATABASE_URL_ENV})"
                    )
                    raise LedgerUnavailable(
                        f"the request ledger's database {self.where} did not answer for {self.retry_s:.0f} s "
                        f"({_first_line(exc)}): {todo}, then run again; what was sent is settled by the next run"
                    ) from exc
                log.warning("request ledger %s: %s; trying again in %.2f s", self.where, _first_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` in one transaction, the whole transaction repeated through a blip (`_retrying`)."""

        def once() -> T:
            with self._engine.begin() as conn:
                return work(conn)

        return self._retrying(once)

    def _quick_check(self, conn: Connection) -> None:
        """SQLite's own check of the file's structure (fast: no index cross-check); damage raises."""
        found = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        if found != ["ok"]:
            path = schema.sqlite_file(self.url) or Path(self.where)
            reason = "; ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
            raise LedgerDamaged(str(path), reason, remedy=schema.rebuild_remedy(path))

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
        query = sa.select(entries.c.body).where(self._match(entries, job_key))
        body = self._transaction(lambda conn: conn.execute(query).scalar_one_or_none())
        return LedgerEntry.model_validate_json(body) if body else None

    def has_result(self, job_key: str | None) -> bool:
        """Whether the key's output was already paid for and downloaded (a run reuses it, at no cost)."""
        entry = self.get(job_key) if job_key else None
        return entry is not None and entry.state is JobState.succeeded

    def put(self, entry: LedgerEntry) -> None:
        """Insert or replace the key's entry (update first; insert when there was none)."""
        values = {"body": entry.model_dump_json(), "updated_at": entry.updated_at}

        def upsert(conn: Connection) -> None:  # repeated after a commit that landed: it writes the same again
            changed = conn.execute(entries.update().where(self._match(entries, entry.job_key)).values(values))
            if changed.rowcount == 0:
                conn.execute(entries.insert().values(namespace=self.namespace, job_key=entry.job_key, **values))

        for attempt in range(2):
            try:
                self._transaction(upsert)
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
        bodies = self._transaction(lambda conn: list(conn.execute(query).scalars()))
        return [LedgerEntry.model_validate_json(body) for body in bodies]

    def request_ids(self, since: float = 0.0) -> set[str]:
        """The fal request ids of the entries written at or after `since` (epoch seconds)."""
        query = sa.select(entries.c.body).where(entries.c.namespace == self.namespace, entries.c.updated_at >= since)
        with self._engine.begin() as conn:
            bodies = [LedgerEntry.model_validate_json(body) for body in conn.execute(query).scalars()]
        return {e.request_id for e in bodies if e.request_id}

    def try_lock(self, job_key: str, run_id: str) -> bool:
        """Take the job's lock if free or stale; renewing it when we already hold it."""
        mine, held = self.owner(run_id, self.lease_s), self.lock_holder(job_key)
        if held is None:
            return self._insert_lock(job_key, mine)
        if held.token != self.token and not held.is_stale(time.time()):
            return False
        return self._swap_lock(job_key, held, mine)

    def _insert_lock(self, job_key: str, mine: LockOwner) -> bool:
        """Take a free lock; False when another process inserted it first (the primary key decides). A duplicate
        key may also be our own insert, committed before the connection dropped and repeated: the row then
        shows `mine` exactly, and the lock is ours."""
        row = {"namespace": self.namespace, "job_key": job_key, "token": mine.token}
        insert = locks.insert().values(**row, lease_until=mine.lease_until, owner=mine.model_dump_json())
        try:
            self._transaction(lambda conn: conn.execute(insert))
        except sa.exc.IntegrityError:
            return self._shows(self.lock_holder(job_key), mine)
        return True

    def _swap_lock(self, job_key: str, held: LockOwner, mine: LockOwner) -> bool:
        """Compare-and-set: replace `held` by `mine` only if the row still shows `held` (one contender wins).
        No row changed, yet the row shows `mine`: our own swap, committed before the connection dropped."""
        seen = sa.and_(locks.c.token == held.token, locks.c.lease_until == held.lease_until)
        values = {"token": mine.token, "lease_until": mine.lease_until, "owner": mine.model_dump_json()}

        def swap(conn: Connection) -> bool:
            if conn.execute(locks.update().where(self._match(locks, job_key), seen).values(values)).rowcount == 1:
                return True
            raw = conn.execute(sa.select(locks.c.owner).where(self._match(locks, job_key))).scalar_one_or_none()
            return self._shows(LockOwner.model_validate_json(raw) if raw else None, mine)

        return self._transaction(swap)

    @staticmethod
    def _shows(holder: LockOwner | None, mine: LockOwner) -> bool:
        """Whether the lock row holds exactly `mine` (this ledger's token, this very lease)."""
        return holder is not None and (holder.token, holder.lease_until) == (mine.token, mine.lease_until)

    def unlock(self, job_key: str) -> None:
        delete = locks.delete().where(self._match(locks, job_key), locks.c.token == self.token)
        self._transaction(lambda conn: conn.execute(delete))

    def lock_holder(self, job_key: str) -> LockOwner | None:
        query = sa.select(locks.c.owner).where(self._match(locks, job_key))
        raw = self._transaction(lambda conn: conn.execute(query).scalar_one_or_none())
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
