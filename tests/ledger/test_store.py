"""The request ledger: durable entries and locks that a killed process cannot hold forever."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from klingflow.ledger.store import LedgerEntry, RequestLedger


def _entry(key: str, state: str = "submitting") -> LedgerEntry:
    return LedgerEntry(job_key=key, state=state, job_id="j", run_id="r", backend="simulator", updated_at=time.time())


def test_entries_persist_and_are_namespaced(tmp_path: Path) -> None:
    """An entry written by one ledger is read by the next; other backends do not see it."""
    first = RequestLedger(tmp_path, "simulator")
    first.put(_entry("k1"))
    first.update("k1", state="submitted", request_id="req-1")
    first.close()
    again = RequestLedger(tmp_path, "simulator")
    entry = again.get("k1")
    assert entry is not None
    assert (entry.state, entry.request_id) == ("submitted", "req-1")
    assert [e.job_key for e in again.entries()] == ["k1"]
    assert RequestLedger(tmp_path, "fal").get("k1") is None


def test_cache_directory_is_private_and_holds_no_pickles(tmp_path: Path) -> None:
    """The ledger's directory is 0700 and every value is stored as (zlib-wrapped) JSON, never a pickle."""
    import json
    import sqlite3
    import zlib

    ledger = RequestLedger(tmp_path / "requests", "simulator")
    ledger.put(_entry("k"))
    assert (tmp_path / "requests").stat().st_mode & 0o777 == 0o700
    rows = sqlite3.connect(tmp_path / "requests" / "cache.db").execute("SELECT value, mode FROM Cache").fetchall()
    assert rows
    for value, mode in rows:
        assert mode != 4  # diskcache's MODE_PICKLE
        assert json.loads(zlib.decompress(value))


def test_lock_blocks_a_live_holder_and_is_reentrant(tmp_path: Path) -> None:
    """A lock held by another live process is refused; our own is renewed."""
    ledger = RequestLedger(tmp_path, "simulator")
    script = (
        "import sys,time; sys.path.insert(0, sys.argv[1]);"
        "from klingflow.ledger.store import RequestLedger;"
        "l = RequestLedger(sys.argv[2], 'simulator'); assert l.try_lock('k', 'other'); print('locked', flush=True);"
        "time.sleep(30)"
    )
    cmd = [sys.executable, "-c", script, os.getcwd(), str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
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


def test_expired_lease_is_taken_over(tmp_path: Path) -> None:
    """A lease that lapsed (owner on another host, or hung) no longer blocks."""
    ledger = RequestLedger(tmp_path, "simulator", lease_s=0.2)
    other = RequestLedger(tmp_path, "simulator", lease_s=0.2)
    assert other.try_lock("k", "first")
    assert not ledger.try_lock("k", "second")
    time.sleep(0.3)
    assert ledger.try_lock("k", "second")


async def test_locked_waits_for_release(tmp_path: Path) -> None:
    """`locked` waits while another run holds the job and proceeds once it is released."""
    first, second = RequestLedger(tmp_path, "simulator"), RequestLedger(tmp_path, "simulator")
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


def test_updates_are_validated(tmp_path: Path) -> None:
    """An unknown field or a wrong type never reaches the ledger."""
    import pytest
    from pydantic import ValidationError

    with RequestLedger(tmp_path, "simulator") as ledger:
        ledger.put(_entry("k"))
        with pytest.raises(ValidationError):
            ledger.update("k", statte="submitted")
        with pytest.raises(ValidationError):
            ledger.update("k", state="paid-twice")
        assert ledger.get("k").state == "submitting"


def test_a_bill_is_carried_by_one_run_only(tmp_path: Path) -> None:
    """The run that saw a bill owns it while it is open; once it is gone, the next run carries it."""
    first = RequestLedger(tmp_path, "simulator")
    entry = first.write(_entry("k"), state="completed", report_pending=True, bill_owner=first.owner("r1", 3600))
    second = RequestLedger(tmp_path, "simulator")
    assert first.carries_bill(entry) and not second.carries_bill(entry)
    first.close()
    assert second.carries_bill(second.get("k"))
    second.mark_reported(["k"], "r2")
    assert second.get("k").report_pending  # not its bill yet: mark_reported clears only its own
    second.write(second.get("k"), bill_owner=second.owner("r2", 3600))
    second.mark_reported(["k"], "r2")
    assert (second.get("k").report_pending, second.get("k").billed_in_run) == (False, "r2")
    second.close()
