"""The results database: schema from the migrations, revision checks, URLs, opening errors."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, column, func, inspect, select, table, update

from invssl.db import session as db_session
from invssl.db.models import Base, Sweep
from invssl.db.session import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    mask_url,
    open_engine,
    resolve_url,
    session_scope,
)
from invssl.db.sqlitefile import network_fs_type
from invssl.errors import DatabaseError, SchemaMismatch

REPO = Path(__file__).resolve().parents[1]


def schema_diffs(url: str, metadata: MetaData = Base.metadata) -> list[Any]:
    engine = db_session.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def alembic_on(url: str, fn: Any, *args: Any) -> None:
    """Run an alembic command programmatically on ``url``, as invssl does."""
    engine = db_session.make_engine(url, migrating=True)
    try:
        with engine.begin() as conn:
            cfg = db_session._alembic_config()
            cfg.attributes["connection"] = conn
            fn(cfg, *args)
    finally:
        engine.dispose()


def test_upgrade_of_an_empty_database_gives_the_models_schema(db_url: str) -> None:
    engine = open_engine(db_url, upgrade=False)
    assert current_revision(engine) == head_revision()
    assert schema_diffs(db_url) == []
    # The comparison does see a difference when there is one.
    changed = MetaData()
    for t in Base.metadata.sorted_tables:
        t.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("priority", Integer))
    assert [d[0] for d in schema_diffs(db_url, changed)] == ["add_column"]
    engine.dispose()


def test_alembic_command_upgrades_with_the_repository_config(db_url: str) -> None:
    env = dict(os.environ, INVSSL_DB=db_url)
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert schema_diffs(db_url) == []
    engine = open_engine(db_url, upgrade=False)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_older_revision_is_refused_without_upgrade_and_upgraded_with_it(db_url: str) -> None:
    open_engine(db_url).dispose()
    alembic_on(db_url, command.downgrade, "base")
    masked = mask_url(db_url)
    with pytest.raises(SchemaMismatch) as err:
        open_engine(db_url, upgrade=False)
    # The library names no command; the CLI adds "run `invssl db upgrade --db URL`" from `where`.
    assert err.value.where == masked and "upgrade its schema" in str(err.value)
    assert "revision base" in str(err.value)
    engine = open_engine(db_url, upgrade=True)
    assert current_revision(engine) == head_revision()
    assert schema_diffs(db_url) == []
    engine.dispose()


def test_unknown_revision_is_refused(db_url: str) -> None:
    engine = open_engine(db_url)
    version = table(VERSION_TABLE, column("version_num"))
    with engine.begin() as conn:
        conn.execute(update(version).values(version_num="9999_from_the_future"))
    engine.dispose()
    for upgrade in (False, True):
        with pytest.raises(DatabaseError, match="9999_from_the_future.*newer"):
            open_engine(db_url, upgrade=upgrade)
    with pytest.raises(DatabaseError, match="newer"):
        db_session.upgrade(db_url)


def test_unversioned_tables_are_not_taken_for_an_invssl_database(sqlite_url: str) -> None:
    engine = db_session.make_engine(sqlite_url)
    other = MetaData()
    table_ = Sweep.__table__.to_metadata(other)
    other.create_all(engine, tables=[table_])
    engine.dispose()
    with pytest.raises(DatabaseError, match="not an invssl database"):
        open_engine(sqlite_url)


def test_upgrade_is_quiet_and_leaves_logging_alone(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    alembic_level = logging.getLogger("alembic").level
    open_engine(sqlite_url).dispose()
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("alembic").level == alembic_level


def test_mask_url_hides_the_password() -> None:
    url = "postgresql+psycopg://alice:s3cr%40t@db.example.org:5433/results"
    masked = mask_url(url)
    assert masked == "postgresql+psycopg://alice:***@db.example.org:5433/results"
    assert "s3cr" not in masked
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "hunter2" not in mask_url("not a url://bob:hunter2@host/db")


def test_resolve_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INVSSL_DB", raising=False)
    assert resolve_url(None) == "sqlite:///invssl.db"
    monkeypatch.setenv("INVSSL_DB", "sqlite:////data/env.db")
    assert resolve_url(None) == "sqlite:////data/env.db"
    assert resolve_url("sqlite:///explicit.db") == "sqlite:///explicit.db"
    assert resolve_url(str(tmp_path / "bare.db")) == f"sqlite:///{tmp_path / 'bare.db'}"
    assert resolve_url("runs/bare.db") == "sqlite:///runs/bare.db"
    assert resolve_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"


def test_a_plain_postgresql_url_uses_the_installed_driver(pg_url: str) -> None:
    engine = open_engine(resolve_url(pg_url.replace("postgresql+psycopg://", "postgresql://")))
    assert engine.dialect.driver == "psycopg"
    assert current_revision(engine) == head_revision()
    engine.dispose()


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
fileserver:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
/dev/vdb1 /home/alice/local ext4 rw 0 0
//nas/lab\\040share /mnt/lab\\040share cifs rw 0 0
tmpfs /tmp tmpfs rw 0 0
sshfs#bob@host: /mnt/remote fuse.sshfs rw 0 0
"""


def test_network_file_systems_are_recognised_from_the_mount_table() -> None:
    assert network_fs_type("/home/bob/runs/invssl.db", MOUNTS) == "nfs4"
    assert network_fs_type("/home", MOUNTS) == "nfs4"
    # The longest matching mount point decides: a local disk mounted inside the NFS home.
    assert network_fs_type("/home/alice/local/invssl.db", MOUNTS) is None
    assert network_fs_type("/mnt/lab share/invssl.db", MOUNTS) == "cifs"
    assert network_fs_type("/mnt/remote/x.db", MOUNTS) == "fuse.sshfs"
    assert network_fs_type("/tmp/x.db", MOUNTS) is None
    assert network_fs_type("/homework/x.db", MOUNTS) is None  # a prefix of a name is not a parent
    assert network_fs_type("/srv/x.db", MOUNTS) is None


def test_unreachable_or_invalid_databases_fail_in_one_line(tmp_path: Path) -> None:
    with socketless_port() as port:
        url = f"postgresql+psycopg://alice:hunter2@127.0.0.1:{port}/results"
        with pytest.raises(DatabaseError) as err:
            open_engine(url)
    message = str(err.value)
    assert "\n" not in message and "hunter2" not in message
    assert f"alice:***@127.0.0.1:{port}/results" in message
    with pytest.raises(DatabaseError, match="cannot open") as err:
        open_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    assert "\n" not in str(err.value)
    with pytest.raises(DatabaseError, match="SQLite or PostgreSQL"):
        open_engine("mysql+pymysql://u:pw@h/db")
    with pytest.raises(DatabaseError, match="not a database URL"):
        open_engine("::not a url::/x")


@contextmanager
def socketless_port() -> Iterator[int]:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_session_scope_commits_or_rolls_back(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    with session_scope(engine) as s:
        s.add(Sweep(name="kept", spec="{}", created_at=datetime.now(timezone.utc)))
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        s.add(Sweep(name="dropped", spec="{}", created_at=datetime.now(timezone.utc)))
        s.flush()
        raise RuntimeError("boom")
    with session_scope(engine) as s:
        assert list(s.scalars(select(Sweep.name))) == ["kept"]
        created = s.scalars(select(Sweep.created_at)).one()
        assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    engine.dispose()


def _open_at_once(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        open_engine(url).dispose()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_an_empty_database_together_create_one_schema(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(db_url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok", "ok"]
    engine = db_session.make_engine(db_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(table(VERSION_TABLE))) == 1
        assert set(inspect(conn).get_table_names()) >= {"jobs", "epochs", "checkpoints"}
    engine.dispose()
    assert schema_diffs(db_url) == []
