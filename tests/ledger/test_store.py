"""The request ledger: durable entries and locks that a killed process cannot hold forever."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klingflow.errors import LedgerSchemaError
from klingflow.ledger.schema import SQLITE_FILE
from klingflow.ledger.store import LedgerEntry, RequestLedger


def _entry(key: str, state: str = "submitting") -> LedgerEntry:
    return LedgerEntry(job_key=key, state=state, job_id="j", run_id="r", backend="simulator", updated_at=time.time())


def test_entries_persist_and_are_namespaced(tmp_path: Path, ledger_url: str) -> None:
    """An entry written by one ledger is read by the next; other backends do not see it."""
    first = RequestLedger(tmp_path, "simulator", url=ledger_url)
    first.put(_entry("k1"))
    first.update("k1", state="submitted", request_id="req-1")
    first.close()
    again = RequestLedger(tmp_path, "simulator", url=ledger_url)
    entry = again.get("k1")
    assert entry is not None
    assert (entry.state, entry.request_id) == ("submitted", "req-1")
    assert [e.job_key for e in again.entries()] == ["k1"]
    assert RequestLedger(tmp_path, "fal", url=ledger_url).get("k1") is None


def test_lock_blocks_a_live_holder_and_is_reentrant(tmp_path: Path, ledger_url: str) -> None:
    """A lock held by another live process is refused; our own is renewed."""
    ledger = RequestLedger(tmp_path, "simulator", url=ledger_url)
    script = (
        "import sys,time; sys.path.insert(0, sys.argv[1]);"
        "from klingflow.ledger.store import RequestLedger;"
        "l = RequestLedger(sys.argv[2], 'simulator'); assert l.try_lock('k', 'other'); print('locked', flush=True);"
        "time.sleep(30)"
    )
    cmd = [sys.executable, "-c", script, os.getcwd(), str(tmp_path)]
    env = {**os.environ, "KLINGFLOW_DATABASE_URL": ledger_url}  # the subprocess finds the database by the setting
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        assert not ledger.try_lock("k", "mine")
        assert ledger.try_lock("free", "mine")
        assert ledger.try_lock("free", "mine")
    finally:
        proc.kill()
        proc.wait()
    assert ledger.try_lock("k", "mine"), "a killed holder's lock is taken over at once"


def test_expired_lease_is_taken_over(tmp_path: Path, ledger_url: str) -> None:
    """A lease that lapsed (owner on another host, or hung) no longer blocks."""
    ledger = RequestLedger(tmp_path, "simulator", lease_s=0.2, url=ledger_url)
    other = RequestLedger(tmp_path, "simulator", lease_s=0.2, url=ledger_url)
    assert other.try_lock("k", "first")
    assert not ledger.try_lock("k", "second")
    time.sleep(0.3)
    assert ledger.try_lock("k", "second")


async def test_locked_waits_for_release(tmp_path: Path, ledger_url: str) -> None:
    """`locked` waits while another run holds the job and proceeds once it is released."""
    first, second = (
        RequestLedger(tmp_path, "simulator", url=ledger_url),
        RequestLedger(tmp_path, "simulator", url=ledger_url),
    )
    order: list[str] = []

    async def holder() -> None:
        async with first.locked("k", "a"):
            order.append("a-in")
            await asyncio.sleep(0.3)
            order.append("a-out")

    async def waiter() -> None:
        await asyncio.sleep(0.05)
        async with second.locked("k", "b", poll_s=0.05):
            order.append("b-in")

    await asyncio.gather(holder(), waiter())
    assert order == ["a-in", "a-out", "b-in"]


def test_updates_are_validated(tmp_path: Path, ledger_url: str) -> None:
    """An unknown field or a wrong type never reaches the ledger."""
    from pydantic import ValidationError

    with RequestLedger(tmp_path, "simulator", url=ledger_url) as ledger:
        ledger.put(_entry("k"))
        with pytest.raises(ValidationError):
            ledger.update("k", statte="submitted")
        with pytest.raises(ValidationError):
            ledger.update("k", state="paid-twice")
        assert ledger.get("k").state == "submitting"


def test_a_bill_is_carried_by_one_run_only(tmp_path: Path, ledger_url: str) -> None:
    """The run that saw a bill owns it while it is open; once it is gone, the next run carries it."""
    first = RequestLedger(tmp_path, "simulator", url=ledger_url)
    entry = first.write(_entry("k"), state="completed", report_pending=True, bill_owner=first.owner("r1", 3600))
    second = RequestLedger(tmp_path, "simulator", url=ledger_url)
    assert first.carries_bill(entry) and not second.carries_bill(entry)
    first.close()
    assert second.carries_bill(second.get("k"))
    second.mark_reported(["k"], "r2")
    assert second.get("k").report_pending  # not its bill yet: mark_reported clears only its own
    second.write(second.get("k"), bill_owner=second.owner("r2", 3600))
    second.mark_reported(["k"], "r2")
    assert (second.get("k").report_pending, second.get("k").billed_in_run) == (False, "r2")
    second.close()


_CONTENDER = """
import json, sys, time
from klingflow.ledger.store import RequestLedger
directory, url, name, start_at, keys = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
ledger = RequestLedger(directory, "simulator", url=url)
time.sleep(max(0.0, start_at - time.time()))
won = {p: [k for k in (f"{p}-{i}" for i in range(keys)) if ledger.try_lock(k, name)] for p in ("free", "stale")}
print(json.dumps(won), flush=True)
time.sleep(2)  # stay alive: our locks are not stale while the other contender still tries
"""


def test_two_processes_never_both_take_a_lock(tmp_path: Path, ledger_url: str) -> None:
    """Two processes racing for the same free and lapsed locks, at the same instant: each lock has one winner."""
    keys = 60
    lapsed = RequestLedger(tmp_path, "simulator", lease_s=-1.0, url=ledger_url)  # leases already over
    assert all(lapsed.try_lock(f"stale-{i}", "dead-run") for i in range(keys))  # kept, as by a hung holder
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(tmp_path), ledger_url, name, str(start_at), str(keys)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    won = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for phase in ("free", "stale"):
        a, b = set(won[0][phase]), set(won[1][phase])
        assert not a & b, f"{phase}: both processes took {sorted(a & b)[:5]}"
        assert a | b == {f"{phase}-{i}" for i in range(keys)}
    lapsed.close()


def test_sqlite_ledger_is_a_private_file_of_json(tmp_path: Path) -> None:
    """The default ledger is one SQLite file in a 0700 directory; entries are stored as JSON text."""
    with RequestLedger(tmp_path / "requests", "simulator") as ledger:
        ledger.put(_entry("k"))
        assert ledger.is_sqlite
    assert (tmp_path / "requests").stat().st_mode & 0o777 == 0o700
    rows = sqlite3.connect(tmp_path / "requests" / SQLITE_FILE).execute("SELECT body FROM klingflow_ledger_entries")
    assert [json.loads(body)["job_key"] for (body,) in rows] == ["k"]


def test_a_diskcache_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """A ledger written by the diskcache version opens: its entries are there, its stale locks are not."""
    from klingflow.cachedir import open_json_cache

    with open_json_cache(tmp_path) as old:
        old.set("simulator|entry|k1", _entry("k1", "completed").model_dump(mode="json"))
        old.set("fal|entry|k2", _entry("k2").model_dump(mode="json"))
        old.set("simulator|lock|k1", {"host": "h", "pid": 1, "token": "t", "run_id": "r", "lease_until": 9e9})
    with RequestLedger(tmp_path, "simulator") as ledger:
        assert [(e.job_key, e.state) for e in ledger.entries()] == [("k1", "completed")]
        assert ledger.try_lock("k1", "mine")
    with RequestLedger(tmp_path, "fal") as ledger:
        assert [e.job_key for e in ledger.entries()] == ["k2"]


def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path, ledger_url: str) -> None:
    """Opening records the schema version; a database from a newer klingflow is refused, not misread."""
    import sqlalchemy as sa

    from klingflow.ledger import schema

    RequestLedger(tmp_path, "simulator", url=ledger_url).close()
    engine = schema.create_ledger_engine(ledger_url)
    try:
        with engine.begin() as conn:
            assert schema.current_version(conn) == schema.SCHEMA_VERSION
            conn.execute(sa.update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
        with pytest.raises(LedgerSchemaError, match="newer"):
            RequestLedger(tmp_path, "simulator", url=ledger_url)
    finally:
        engine.dispose()


def test_the_setting_chooses_the_database_and_logs_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str
) -> None:
    """KLINGFLOW_DATABASE_URL picks the ledger's database; its printable form hides a password."""
    monkeypatch.setenv("KLINGFLOW_DATABASE_URL", ledger_url)
    with RequestLedger(tmp_path / "unused", "simulator") as ledger:
        assert ledger.url == ledger_url
    from klingflow.ledger.schema import safe_url

    assert "s3cret" not in safe_url("postgresql+psycopg://team:s3cret@db.example:5432/klingflow")


_OPENER = """
import sys, time
from klingflow.ledger.store import RequestLedger
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
with RequestLedger(sys.argv[1], "simulator", url=sys.argv[2]) as ledger:
    print(ledger.try_lock("k", "r"), flush=True)
    time.sleep(1)
"""


def test_processes_opening_a_new_ledger_at_once_create_it_once(tmp_path: Path, ledger_url: str) -> None:
    """Three processes opening an empty database at the same instant all get a working ledger; one lock wins."""
    start_at = time.time() + 3.0
    argv = [sys.executable, "-c", _OPENER, str(tmp_path), ledger_url, str(start_at)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["False", "False", "True"]
