"""The request ledger's database: tables (SQLAlchemy Core), engines, and versioned upgrades.

One schema serves SQLite (the embedded default, a file in the state dir) and PostgreSQL (shared by
workers on several machines), chosen by a URL. Upgrades are numbered steps recorded in a version
table, run in one transaction, so a ledger of any older version opens, and two processes opening a
new database at once create it once.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from pydantic import BaseModel, field_validator
from sqlalchemy.engine import Connection, Engine, make_url

from klingflow.cachedir import open_json_cache, private_dir
from klingflow.errors import LedgerSchemaError

DATABASE_URL_ENV = "KLINGFLOW_DATABASE_URL"
LEDGER_DIR = "requests"  # the SQLite ledger's folder in the state dir
SQLITE_FILE = "ledger.sqlite"
SCHEMA_VERSION = 1

metadata = sa.MetaData()
schema_version = sa.Table(
    "klingflow_ledger_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: one row
    sa.Column("version", sa.Integer, nullable=False),
)
entries = sa.Table(
    "klingflow_ledger_entries",
    metadata,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("job_key", sa.String(128), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # LedgerEntry as JSON
    sa.Column("updated_at", sa.Float, nullable=False),
)
locks = sa.Table(
    "klingflow_ledger_locks",
    metadata,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("job_key", sa.String(128), primary_key=True),
    sa.Column("token", sa.String(32), nullable=False),  # the holder; compared on every take-over
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),  # LockOwner as JSON
)


class LedgerSettings(BaseModel):
    """Where the ledger lives: `url` (KLINGFLOW_DATABASE_URL) or, when unset, SQLite in the state dir."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value:
            make_url(value)  # a malformed URL fails here, naming no password
        return value or None

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> LedgerSettings:
        return cls(url=environ.get(DATABASE_URL_ENV))


def sqlite_url(directory: str | Path) -> str:
    return f"sqlite:///{private_dir(directory) / SQLITE_FILE}"


def ledger_file(state_dir: str | Path) -> Path:
    """The SQLite ledger of a state dir (created by the first run that opens it)."""
    return Path(state_dir).expanduser() / LEDGER_DIR / SQLITE_FILE


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (None for another database)."""
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def rebuild_remedy(path: Path) -> str:
    """What to do about a damaged SQLite ledger, as an error message says it."""
    if path.parent.name == LEDGER_DIR:
        command = f"klingflow ledger rebuild --state-dir {shlex.quote(str(path.parent.parent))}"
        return f"run `{command}` (it keeps every readable entry; the next run adopts the rest from fal's history)"
    return f"move {path} aside (the next run adopts from fal's history the work it recorded)"


def safe_url(url: str) -> str:
    """The URL as it may be logged: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_immediate(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction begins, so read-check-write is one atomic step
    (pysqlite's own BEGIN comes late and skips DDL); WAL so readers do not block the writer."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_ledger_engine(url: str) -> Engine:
    """An engine for `url`; bound values stay out of error messages (they hold prompts and ids)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": 60}, hide_parameters=True)
        _sqlite_immediate(engine)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)


def _import_diskcache(conn: Connection, legacy_dir: Path | None) -> None:
    """Entries of a pre-SQLAlchemy ledger (diskcache `cache.db` in the same dir) move into the table;
    its locks are not carried over (their runs are over)."""
    if legacy_dir is None or not (legacy_dir / "cache.db").exists():
        return
    with open_json_cache(legacy_dir) as old:
        for key in list(old.iterkeys()):
            namespace, kind, job_key = ([*str(key).split("|", 2), "", ""])[:3]
            value = old.get(key)
            if kind == "entry" and isinstance(value, dict):
                row = {"namespace": namespace, "job_key": job_key, "body": json.dumps(value)}
                conn.execute(entries.insert().values(**row, updated_at=float(value.get("updated_at") or time.time())))


def _v1(conn: Connection, legacy_dir: Path | None) -> None:
    for table in (entries, locks):
        table.create(conn)
    _import_diskcache(conn, legacy_dir)


UPGRADES: dict[int, Callable[[Connection, Path | None], None]] = {1: _v1}


def current_version(conn: Connection) -> int:
    """The database's schema version (0: empty)."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    return conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none() or 0


def _upgrade_once(engine: Engine, legacy_dir: Path | None) -> int:
    with engine.begin() as conn:
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"the request ledger has schema {found}, newer than this klingflow's {SCHEMA_VERSION}"
            )
        if found == SCHEMA_VERSION:
            return found
        if found == 0:
            schema_version.create(conn)
            conn.execute(schema_version.insert().values(id=1, version=0))
        for step in range(found + 1, SCHEMA_VERSION + 1):
            UPGRADES[step](conn, legacy_dir)
        conn.execute(schema_version.update().where(schema_version.c.id == 1).values(version=SCHEMA_VERSION))
        return found


def upgrade(engine: Engine, legacy_dir: Path | None = None, *, attempts: int = 5) -> int:
    """Bring the schema to SCHEMA_VERSION; the version found. Two processes creating it at once: one
    wins, the other's transaction fails on the duplicate table and retries to find it done."""
    for attempt in range(attempts):
        try:
            return _upgrade_once(engine, legacy_dir)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
