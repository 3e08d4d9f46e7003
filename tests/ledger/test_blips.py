"""Database blips cost nothing: the ledger repeats a transaction through a dropped connection or a busy file,
and says clearly, naming the database, when the database stays away."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from klingflow.errors import LedgerUnavailable
from klingflow.ledger.schema import sqlite_file
from klingflow.ledger.store import LedgerEntry, RequestLedger, is_blip, is_damage


def _entry(key: str, state: str = "submitting") -> LedgerEntry:
    return LedgerEntry(job_key=key, state=state, job_id="j", run_id="r", backend="simulator", updated_at=time.time())


def _wrapped(orig: Exception, kind: type[sa.exc.DBAPIError] = sa.exc.OperationalError) -> sa.exc.DBAPIError:
    return kind("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "blip", "damage"),
    [
        (_wrapped(sqlite3.OperationalError("database is locked")), True, False),
        (_wrapped(sqlite3.OperationalError("no such table: klingflow_ledger_entries")), False, False),
        (_wrapped(sqlite3.DatabaseError("database disk image is malformed"), sa.exc.DatabaseError), False, True),
        (_wrapped(sqlite3.DatabaseError("file is not a database"), sa.exc.DatabaseError), False, True),
        (_wrapped(psycopg.OperationalError("server closed the connection unexpectedly")), True, False),
        (_wrapped(psycopg.OperationalError("connection refused")), True, False),
        (_wrapped(psycopg.IntegrityError("duplicate key"), sa.exc.IntegrityError), False, False),
        (ValueError("not a database error"), False, False),
    ],
)
def test_which_errors_are_blips_and_which_are_damage(error: Exception, blip: bool, damage: bool) -> None:
    """A dropped connection or a busy file is repeated; a missing table or a duplicate is not; a malformed file
    is damage."""
    assert (is_blip(error), is_damage(error)) == (blip, damage)


def test_a_dropped_connection_is_flagged_a_blip() -> None:
    """SQLAlchemy's `connection_invalidated` (a disconnect it detected) is a blip, whatever the driver said."""
    error = sa.exc.DBAPIError("SELECT 1", {}, psycopg.DatabaseError("lost"), connection_invalidated=True)
    assert is_blip(error)


def _hold_sqlite_lock(url: str, seconds: float) -> None:
    """Another process's write transaction on the file, for a while (the ledger waits, then goes on)."""
    path = sqlite_file(url)
    assert path is not None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_the_ledger_keeps_working_through_a_restart(
    tmp_path: Path, ledger_url: str, request: pytest.FixtureRequest
) -> None:
    """Writes, reads and locks go on without an error while PostgreSQL restarts (`pg_ctl restart -m fast`)
    or another process holds the SQLite file's write lock; nothing written is lost."""
    ledger = RequestLedger(tmp_path, "simulator", url=ledger_url)
    errors: list[BaseException] = []
    done: list[int] = []
    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set():
            try:
                key = f"k{i}"
                ledger.put(_entry(key))
                ledger.update(key, state="submitted", request_id=f"req-{i}")
                assert ledger.try_lock(key, "r")
                assert ledger.try_lock(key, "r")  # renewed: a compare-and-set on our own lease
                ledger.unlock(key)
                done.append(i)
            except Exception as exc:  # noqa: BLE001 (the thread's failure is the test's: asserted below)
                errors.append(exc)
                return
            i += 1

    worker = threading.Thread(target=work)
    worker.start()
    try:
        while len(done) < 5 and worker.is_alive():
            time.sleep(0.01)
        if ledger_url.startswith("postgresql"):
            request.getfixturevalue("pg_cluster").restart()
        else:
            _hold_sqlite_lock(ledger_url, 1.0)
        after = len(done)
        while len(done) < after + 5 and worker.is_alive():
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
    assert len(done) >= after + 5
    states = {e.job_key: (e.state, e.request_id) for e in ledger.entries()}
    assert all(states[f"k{i}"] == ("submitted", f"req-{i}") for i in done)
    ledger.close()


def test_a_lock_insert_that_committed_before_the_drop_is_ours(tmp_path: Path, ledger_url: str) -> None:
    """A repeated insert or swap that finds the row already showing our very lease (the first try committed,
    its answer was lost) counts as taken; another owner's row does not."""
    ledger = RequestLedger(tmp_path, "simulator", url=ledger_url)
    other = RequestLedger(tmp_path, "simulator", url=ledger_url)
    mine = ledger.owner("r", 60)
    assert ledger._insert_lock("k", mine)
    assert ledger._insert_lock("k", mine), "our own committed insert, repeated"
    assert not other._insert_lock("k", other.owner("r2", 60))
    renewed = ledger.owner("r", 120)
    assert ledger._swap_lock("k", mine, renewed)
    assert ledger._swap_lock("k", mine, renewed), "our own committed swap, repeated"
    assert not other._swap_lock("k", mine, other.owner("r2", 60))
    ledger.close()
    other.close()


def test_a_database_that_stays_away_is_named_without_its_password(tmp_path: Path) -> None:
    """Past the retries, LedgerUnavailable names the database (password hidden) and what to do."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql+psycopg://team:s3cret@127.0.0.1:{port}/ledger"
    with pytest.raises(LedgerUnavailable) as caught:
        RequestLedger(tmp_path, "simulator", url=url, retry_s=0.3)
    message = str(caught.value)
    assert f"127.0.0.1:{port}/ledger" in message
    assert "s3cret" not in message
    assert "KLINGFLOW_DATABASE_URL" in message
