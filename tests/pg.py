"""A throw-away PostgreSQL server for the tests (no mocks of the database).

``postgresql_server`` (session scope) runs ``initdb`` into a temporary folder and ``pg_ctl start``
on 127.0.0.1 at a free port, and stops and deletes it at the end of the session. The binaries come
from PATH or /usr/lib/postgresql/<version>/bin (Debian package ``postgresql``; ``make test``
installs it when missing). initdb refuses to run as root, so as root the server runs as the
unprivileged user ``nobody`` (through ``runuser``). Tests skip, saying why, when none of this works.
``postgresql_database`` (function scope) gives each test a fresh database on that server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "nobody"


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: connect as ``postgres`` without a password on 127.0.0.1:``port``."""

    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "pg_ctl").is_file() and (folder / "initdb").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], as_user: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL server for the session, or skip with the reason."""
    bins = _bin_dir()
    if bins is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install the Debian package "
                    "'postgresql' (make test does)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="stetho-pg-"))
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            shutil.rmtree(folder)
            pytest.skip("running as root and runuser is missing: initdb refuses root")
        as_user = ["runuser", "-u", USER, "--"]
        shutil.chown(folder, user=USER)
    data, log = folder / "data", folder / "server.log"
    done = _run([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions"], as_user)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    port = _free_port()
    # fsync off: a test server's data need not survive a power cut, and the tests run faster
    options = f"-k {folder} -h 127.0.0.1 -p {port} -F -c max_connections=50"
    done = _run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], as_user)
    if done.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else done.stderr
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {text.strip().splitlines()[-1:]}")
    try:
        yield PostgresServer(port, folder)
    finally:
        _run([str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], as_user)
        shutil.rmtree(folder, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def postgresql_database(postgresql_server: PostgresServer) -> Iterator[str]:
    """URL of a new empty database on the session's server; dropped after the test."""
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    dsn = f"host=127.0.0.1 port={postgresql_server.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgresql_server.url(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh empty database of each kind: a SQLite file in ``tmp_path``, then a PostgreSQL
    database on the session's throw-away server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return request.getfixturevalue("postgresql_database")
