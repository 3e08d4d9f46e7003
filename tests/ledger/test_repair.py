"""A damaged SQLite ledger (bytes garbled in the middle, the file cut to half, text that no longer parses) is
found, named, and rebuilt from every entry that can still be read; the rebuilt ledger opens."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from klingflow.errors import LedgerDamaged
from klingflow.ledger import repair
from klingflow.ledger.schema import ledger_file
from klingflow.ledger.store import LedgerEntry, RequestLedger

ENTRIES = 200
PAGE = 4096


def _ledger(state_dir: Path) -> Path:
    """A real ledger of ENTRIES entries (a few with bills still to report), closed; its file."""
    with RequestLedger(state_dir / "requests", "simulator") as ledger:
        for i in range(ENTRIES):
            entry = LedgerEntry(
                job_key=f"key-{i:04d}-{'k' * 40}",
                state="succeeded",
                job_id=f"job{i}",
                run_id="run-1",
                backend="simulator",
                request_id=f"req-{i}",
                updated_at=time.time(),
                report_pending=i % 50 == 0,
                error="x" * 300,  # rows of a realistic size: the table spans many pages
            )
            ledger.put(entry)
    path = ledger_file(state_dir)
    assert not path.with_name(path.name + "-wal").exists(), "closing checkpoints the WAL into the file"
    return path


def _garble_middle(path: Path) -> None:
    """One page in the middle of the file overwritten with random bytes, as a bad sector or a torn copy does."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 // PAGE * PAGE
    data[start : start + PAGE] = random.Random(24).randbytes(PAGE)
    path.write_bytes(bytes(data))


def _truncate_half(path: Path) -> None:
    """The file cut to half its size, as a full disk or an interrupted copy leaves it."""
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _readable_keys(path: Path) -> set[str]:
    """The keys an independent reader still gets by key (through the primary-key index), one at a time."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA writable_schema=ON")
    found = set()
    for i in range(ENTRIES):
        key = f"key-{i:04d}-{'k' * 40}"
        try:
            row = conn.execute(
                "SELECT body FROM klingflow_ledger_entries WHERE namespace = 'simulator' AND job_key = ?", (key,)
            ).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row and LedgerEntry.model_validate_json(row[0]).job_key == key:
            found.add(key)
    conn.close()
    return found


@pytest.mark.parametrize("damage", [_garble_middle, _truncate_half], ids=["garbled", "truncated"])
def test_a_damaged_file_is_named_and_rebuilt_from_what_is_readable(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """Opening it raises LedgerDamaged naming the file and the rebuild command; check says damaged; rebuild moves
    it aside, keeps every entry still readable, and the fresh ledger opens and works."""
    state = tmp_path / "state"
    path = _ledger(state)
    damage(path)
    readable = _readable_keys(path)

    with pytest.raises(LedgerDamaged) as caught:
        RequestLedger(path.parent, "simulator")
    assert str(path) in str(caught.value)
    assert f"klingflow ledger rebuild --state-dir {state}" in str(caught.value)

    health = repair.check(state)
    assert health.damaged and health.where == str(path)
    assert health.remedy and "klingflow ledger rebuild" in health.remedy

    done = repair.rebuild(state, now=datetime(2026, 12, 6, 3, 4, 5, tzinfo=UTC))
    assert done.moved_to == path.with_name("ledger.sqlite.damaged-20261206T030405Z")
    assert done.moved_to.exists() and path.exists()
    assert 0 < done.kept < ENTRIES, "some entries were on the damaged pages, the rest are kept"
    with RequestLedger(path.parent, "simulator") as ledger:
        kept = {entry.job_key for entry in ledger.entries()}
        assert readable <= kept, f"lost readable entries: {sorted(readable - kept)[:3]}"
        assert len(kept) == done.kept
        assert all(ledger.get(key).request_id == f"req-{int(key[4:8])}" for key in kept)
        assert ledger.try_lock("new-key", "run-2")
    assert not repair.check(state).damaged


def test_a_row_that_no_longer_parses_is_counted_and_dropped(tmp_path: Path) -> None:
    """A body garbled into text SQLite still reads (the file's structure intact) is damage: check counts it, rebuild
    drops it and keeps the rest, bills pending report included."""
    state = tmp_path / "state"
    path = _ledger(state)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE klingflow_ledger_entries SET body = '{\"job_key\": garbled' WHERE job_key LIKE 'key-0007%'"
        )
    health = repair.check(state)
    assert health.damaged and health.salvage.unparsed == 1 and not health.salvage.problems
    assert health.pending_bills() == ENTRIES // 50
    done = repair.rebuild(state)
    assert (done.kept, done.salvage.unparsed, done.pending_bills) == (ENTRIES - 1, 1, ENTRIES // 50)


def test_a_sound_ledger_is_left_alone(tmp_path: Path) -> None:
    """check of a healthy ledger counts its entries per state; rebuild does nothing to it; no ledger is no damage."""
    assert not repair.check(tmp_path / "empty").exists
    state = tmp_path / "state"
    path = _ledger(state)
    health = repair.check(state)
    assert not health.damaged
    assert health.states() == {"simulator": {"succeeded": ENTRIES}}
    assert repair.rebuild(state).moved_to is None
    assert [p.name for p in path.parent.iterdir() if "damaged" in p.name] == []


def test_the_ensure_opens_check_raises_for_a_damaged_ledger(tmp_path: Path) -> None:
    """What `klingflow run` calls before Prefect starts: a damaged ledger raises, a missing one is created."""
    repair.ensure_opens(tmp_path / "fresh")
    assert ledger_file(tmp_path / "fresh").exists()
    state = tmp_path / "state"
    _garble_middle(_ledger(state))
    with pytest.raises(LedgerDamaged):
        repair.ensure_opens(state)
