"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, on a free loopback port.

initdb refuses to run as root, so as root the cluster belongs to `nobody` (run through runuser); the
binaries come from PATH or Debian's /usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "klingflow"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a non-root user (empty unless we are root)."""
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


@dataclass
class PgCluster:
    """A running cluster; `url(db)` gives a SQLAlchemy URL for one of its databases."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> None:
        subprocess.run([*_as_owner(), *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PgCluster:
        """initdb (trust on loopback only, no unix socket) and start the server, waiting until it accepts."""
        self.root.chmod(0o755)
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(self.data, "nobody")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c fsync=off"
        log = self.data / "server.log"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")
        return self

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its name."""
        import psycopg

        name = name or f"db_{uuid.uuid4().hex[:10]}"
        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def url(self, database: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is dropped, the server is down for a moment (the options of
        the first start are kept in postmaster.opts); returns once it accepts again."""
        log = self.data / "server.log"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        """Stop the server (immediately) and remove its files."""
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """Start a cluster in a new temp dir (outside pytest's 0700 tmp tree, so `nobody` can reach it)."""
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="klingflow-pg-"))
    cluster = PgCluster(bindir=bindir, root=root, port=_free_port())
    try:
        return cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
