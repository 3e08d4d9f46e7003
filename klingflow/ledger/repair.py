"""Checking and rebuilding a damaged request ledger (`klingflow ledger check|rebuild`; the CLI is a thin layer).

A SQLite file garbled or truncated by a disk, a copy or a crash makes every read of it fail, and a run
cannot start on it (RequestLedger raises LedgerDamaged). `check` says what the ledger holds and what is
damaged; `rebuild` moves the file aside (`ledger.sqlite.damaged-<UTC time>`, with its -wal/-shm) and writes
a fresh ledger of every entry that can still be read, one row at a time past the damaged pages. What the
salvage cannot keep is not paid again: a job the ledger does not know is first looked for in fal's
request history of the last 24 h and adopted when fal already did it (klingflow.fal.history).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from pydantic import ValidationError

from klingflow.ledger import schema
from klingflow.ledger.store import LedgerEntry, RequestLedger

ROW_BYTES_MIN = 64  # no entry row is smaller: bounds the row ids worth probing past a damaged page
_COLUMNS = "namespace, job_key, body, updated_at"
_TABLE = schema.entries.name


@dataclass
class Salvage:
    """The rows a ledger still gives, and what stopped the rest."""

    rows: dict[tuple[str, str], tuple[LedgerEntry, float]] = field(default_factory=dict)  # (ns, key) -> entry
    unparsed: int = 0  # rows read whose body is not a valid entry (dropped)
    problems: list[str] = field(default_factory=list)  # what SQLite said (integrity check, unreadable pages)

    def keep(self, namespace: object, job_key: object, body: object, updated_at: object) -> None:
        """One row as read: kept when its body is an entry of that key, counted as unparsed otherwise."""
        try:
            entry = LedgerEntry.model_validate_json(body if isinstance(body, str | bytes) else "")
        except ValidationError:
            self.unparsed += 1
            return
        if not isinstance(namespace, str) or entry.job_key != job_key:
            self.unparsed += 1
            return
        stamp = updated_at if isinstance(updated_at, float | int) else entry.updated_at
        held = self.rows.get((namespace, entry.job_key))
        if held is None or held[1] <= stamp:
            self.rows[(namespace, entry.job_key)] = (entry, float(stamp))

    @property
    def damaged(self) -> bool:
        return bool(self.problems) or self.unparsed > 0


@dataclass
class Health:
    """What `check` found: where, the entries by namespace and state, bills not yet reported, damage."""

    where: str
    exists: bool
    salvage: Salvage
    remedy: str | None = None  # what to do when damaged

    @property
    def damaged(self) -> bool:
        return self.salvage.damaged

    def states(self, namespace: str | None = None) -> dict[str, Counter[str]]:
        found: dict[str, Counter[str]] = {}
        for (ns, _), (entry, _) in sorted(self.salvage.rows.items()):
            if namespace is None or ns == namespace:
                found.setdefault(ns, Counter())[entry.state.value] += 1
        return found

    def pending_bills(self, namespace: str | None = None) -> int:
        return sum(
            entry.report_pending
            for (ns, _), (entry, _) in self.salvage.rows.items()
            if namespace is None or ns == namespace
        )


@dataclass
class Rebuilt:
    """What `rebuild` did: where the damaged file went, what the fresh ledger keeps, what was dropped."""

    path: Path
    moved_to: Path | None  # None: there was nothing to rebuild
    kept: int = 0
    pending_bills: int = 0
    salvage: Salvage = field(default_factory=Salvage)


def _sqlite_rows(conn: sqlite3.Connection, size_bytes: int, salvage: Salvage) -> None:
    """Every entry row SQLite can still read: the table in row-id order while the pages allow, then row by row
    past the damage (a damaged page fails the rows on it, not the others)."""
    last = 0
    try:
        for rowid, *row in conn.execute(f"SELECT rowid, {_COLUMNS} FROM {_TABLE} ORDER BY rowid"):  # noqa: S608
            salvage.keep(*row)
            last = rowid
        return
    except sqlite3.DatabaseError as exc:
        salvage.problems.append(f"reading stopped after row {last}: {exc}")
        if "not a database" in str(exc):  # its first page is gone: no table can be found, row by row either
            return
    try:
        highest = conn.execute(f"SELECT max(rowid) FROM {_TABLE}").fetchone()[0] or last  # noqa: S608
    except sqlite3.DatabaseError:
        highest = last + size_bytes // ROW_BYTES_MIN
    before = len(salvage.rows)
    for rowid in range(last + 1, highest + 1):
        try:
            found = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE rowid = ?", (rowid,)).fetchone()  # noqa: S608
        except sqlite3.DatabaseError:
            continue
        if found is not None:
            salvage.keep(*found)
    more = len(salvage.rows) - before
    salvage.problems.append(f"rows after row {last} are on damaged or missing pages ({more} more read one by one)")


def _integrity(conn: sqlite3.Connection) -> list[str]:
    """SQLite's `PRAGMA integrity_check`: [] when the file is sound, else what it found (at most 5 lines)."""
    try:
        found = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if found == ["ok"] else found


def read_sqlite(path: Path) -> Salvage:
    """Everything a SQLite ledger file still gives, through the sqlite3 module (tolerant of errors; its -wal is
    applied when it sits next to it)."""
    salvage = Salvage()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        salvage.problems.extend(_integrity(conn))
        conn.execute("PRAGMA writable_schema=ON")  # read a truncated file as far as it goes (nothing is written)
        try:
            _sqlite_rows(conn, path.stat().st_size, salvage)
        except sqlite3.DatabaseError as exc:  # the table itself cannot be found (page 1 or the schema is gone)
            salvage.problems.append(f"no entry can be read: {exc}")
    finally:
        conn.close()
    return salvage


def _read_database(url: str) -> Salvage:
    """A PostgreSQL ledger's rows (its server keeps the pages sound: a query proves it answers)."""
    salvage = Salvage()
    engine = schema.create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            if sa.inspect(conn).has_table(_TABLE):
                columns = (schema.entries.c[name] for name in ("namespace", "job_key", "body", "updated_at"))
                for row in conn.execute(sa.select(*columns)):
                    salvage.keep(*row)
    finally:
        engine.dispose()
    return salvage


def check(state_dir: str | Path, url: str | None = None) -> Health:
    """What the ledger of `state_dir` (or the database at `url`) holds and whether it is damaged."""
    if url and schema.sqlite_file(url) is None:
        return Health(where=schema.safe_url(url), exists=True, salvage=_read_database(url))
    path = schema.sqlite_file(url) if url else schema.ledger_file(state_dir)
    assert path is not None
    if not path.exists():
        return Health(where=str(path), exists=False, salvage=Salvage())
    return Health(where=str(path), exists=True, salvage=read_sqlite(path), remedy=schema.rebuild_remedy(path))


def _aside(path: Path, now: datetime) -> Path:
    """Move the ledger and its -wal/-shm aside under one new name (SQLite pairs them by name); the new name."""
    moved = path.with_name(f"{path.name}.damaged-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(moved.with_name(moved.name + suffix))
    path.rename(moved)
    return moved


def rebuild(state_dir: str | Path, *, now: datetime | None = None) -> Rebuilt:
    """Move a damaged SQLite ledger aside and write a fresh one of every entry still readable (no locks: run it
    while no run uses the state dir). A sound ledger is left as it is (`moved_to` None)."""
    path = schema.ledger_file(state_dir)
    if not path.exists() or not check(state_dir).damaged:
        return Rebuilt(path=path, moved_to=None)
    moved = _aside(path, now or datetime.now(UTC))
    salvage = read_sqlite(moved)
    engine = schema.create_ledger_engine(schema.sqlite_url(path.parent))
    try:
        schema.upgrade(engine)
        with engine.begin() as conn:
            for (namespace, job_key), (entry, stamp) in sorted(salvage.rows.items()):
                row = {"namespace": namespace, "job_key": job_key, "body": entry.model_dump_json()}
                conn.execute(schema.entries.insert().values(**row, updated_at=stamp))
    finally:
        engine.dispose()
    RequestLedger(path.parent, "check", url=schema.sqlite_url(path.parent)).close()  # it opens: a run can start
    pending = sum(entry.report_pending for entry, _ in salvage.rows.values())
    return Rebuilt(path=path, moved_to=moved, kept=len(salvage.rows), pending_bills=pending, salvage=salvage)


def ensure_opens(state_dir: str | Path) -> None:
    """Open the run's ledger once and close it: a damaged or unreachable one raises its klingflow error (which
    names the way forward) before a run starts."""
    RequestLedger(Path(state_dir).expanduser() / schema.LEDGER_DIR, "check").close()
