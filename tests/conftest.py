"""Database fixtures: SQLite files in tmp_path and a throwaway PostgreSQL server.

The server is started once per test session from the installed binaries (Debian's
``postgresql`` package), on 127.0.0.1 at a free port with its data in a temporary directory,
and removed at the end. Without the binaries its tests are skipped, except under CI (``$CI``
set), where a missing server is a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy.engine import URL

PG_USER = "invssl"


def _pg_bindir() -> Optional[Path]:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, password: Optional[str] = None) -> None:
        self.bindir = bindir
        self.password = password  # None: every local connection is trusted
        self.dir = Path(tempfile.mkdtemp(prefix="invssl-pg-"))
        self.port = _free_port()
        self.run_as: dict[str, Any] = {}
        # initdb refuses to run as root: hand the cluster to an unprivileged account.
        if os.geteuid() == 0:
            account = next((n for n in ("postgres", "nobody") if _has_user(n)), None)
            if account is None:
                pytest.fail("running as root and no 'postgres' or 'nobody' account for initdb")
            pw = pwd.getpwnam(account)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.data = self.dir / "data"
        self._names = itertools.count()

    def _run(self, tool: str, *args: str, as_owner: bool = True, env: Optional[dict[str, str]] = None) -> None:
        env = dict(os.environ, LC_ALL="C", PGCONNECT_TIMEOUT="10", **(env or {}))
        owner = self.run_as if as_owner else {}
        proc = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.dir,
            timeout=120,
            **owner,
        )
        if proc.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def start(self) -> None:
        auth = ["--auth=trust"]
        if self.password is not None:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.run_as:
                os.chown(pwfile, self.run_as["user"], self.run_as["group"])
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, *auth, "-E", "UTF8", "--no-locale", "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the server on its existing data (after ``halt``)."""
        # Durability settings off: the cluster lives for one test session.
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start"
        )

    def halt(self) -> None:
        """Stop the server as an administrator's restart does: clients are disconnected."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str, password: Optional[str] = None) -> str:
        return URL.create(
            "postgresql+psycopg",
            username=PG_USER,
            host="127.0.0.1",
            port=self.port,
            database=database,
            password=password or self.password,
        ).render_as_string(hide_password=False)

    def createdb(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}{next(self._names)}"
        self._run(
            "createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            PG_USER,
            name,
            as_owner=False,
            env={"PGPASSWORD": self.password} if self.password else {},
        )
        return self.url(name)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _server(password: Optional[str] = None) -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's "
            "'postgresql' package to run the PostgreSQL tests"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (required under CI)")
        pytest.skip(reason)
    server = PostgresServer(bindir, password)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.dir, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    yield from _server()


@pytest.fixture(scope="module")
def own_pg_server() -> Iterator[PostgresServer]:
    """A server of the module's own, with password authentication, that its tests may stop."""
    yield from _server(password="s3cret-pw")


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> str:
    """URL of a database on the throwaway server (``postgresql+psycopg://...``)."""
    return pg_server.createdb("invssl")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database per test: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_server").createdb()


def jobs_and_epochs(url: str) -> tuple[list, list]:
    """Every job (by id) and every epoch row of a results database, read back through the ORM."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from invssl.db.models import Epoch, Job
    from invssl.db.session import open_engine

    engine = open_engine(url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Job).order_by(Job.id))), list(s.scalars(select(Epoch)))
    finally:
        engine.dispose()
