"""Opening the results database: URLs, engines, and keeping the schema at this version's head.

SQLite serves one machine (its connection settings are in ``sqlitefile``); several machines
need PostgreSQL, where schema upgrades run under an advisory lock.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from invssl.db import sqlitefile
from invssl.db.models import Base
from invssl.db.sqlitefile import READONLY
from invssl.errors import DatabaseError, SchemaMismatch

DEFAULT_URL = "sqlite:///invssl.db"
VERSION_TABLE = "invssl_alembic_version"
# Any constant works as long as every invssl process uses the same one; this is "invs" in ASCII.
_SCHEMA_LOCK_KEY = 0x696E7673


# ------------------------------------------------------------------------------------- URLs
def resolve_url(url: Optional[str] = None) -> str:
    """The database URL: ``url``, else ``$INVSSL_DB``, else ``sqlite:///invssl.db``.

    A bare file path means a SQLite file; ``postgresql://`` means the psycopg 3 driver, the one
    invssl installs (SQLAlchemy would otherwise look for psycopg2).
    """
    raw = url or os.environ.get("INVSSL_DB") or DEFAULT_URL
    if "://" not in raw:
        return URL.create("sqlite", database=str(Path(raw).expanduser())).render_as_string(hide_password=False)
    parsed = _parse(raw)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form invssl ever prints."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Not parseable, so the password cannot be located exactly: hide all user info.
        return re.sub(r"//[^/@]*@", "//***@", url)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"not a database URL: {mask_url(url)}") from None
    except ValueError:  # SQLAlchemy converts the port with int()
        raise DatabaseError(f"not a database URL (the port must be a number): {mask_url(url)}") from None
    return parsed


# ---------------------------------------------------------------------------- engines
def make_engine(url: str, *, migrating: bool = False, readonly: bool = False) -> Engine:
    """An engine with invssl's connection settings, without looking at the schema.

    ``migrating``: a single-use engine; on SQLite also without foreign key enforcement, since a
    batch migration recreates a table by DROP, which would otherwise cascade to its children.
    ``readonly``: for reports; a SQLite file is then opened without writing to it or beside it,
    any other engine refuses one this process cannot write.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    pool: dict[str, Any] = {"poolclass": NullPool} if migrating else {}
    try:
        if backend == "sqlite":
            if sqlite3.sqlite_version_info < (3, 35):
                raise DatabaseError(
                    f"SQLite {sqlite3.sqlite_version} is too old (the queue needs RETURNING, "
                    "SQLite 3.35+): use a newer Python build or PostgreSQL"
                )
            sqlitefile.refuse_network_fs(parsed.database)
            if not readonly:
                sqlitefile.refuse_read_only(parsed.database)
            engine = create_engine(parsed, connect_args={"timeout": sqlitefile.BUSY_TIMEOUT_S}, **pool)
            sqlitefile.configure(engine, foreign_keys=not migrating, readonly=readonly, guard=not migrating)
            return engine
        if backend == "postgresql":
            # A worker holds its engine for days; the server may restart in between.
            return create_engine(parsed, pool_pre_ping=True, **pool)
    except (ImportError, NoSuchModuleError) as exc:
        hint = " (pip install 'invssl[postgres]')" if backend == "postgresql" else ""
        raise DatabaseError(f"cannot open {mask_url(url)}: driver missing: {exc}{hint}") from None
    raise DatabaseError(f"unsupported database {mask_url(url)}: invssl uses SQLite or PostgreSQL")


@contextmanager
def _reported(url: str, doing: str) -> Iterator[None]:
    """Driver errors (unreachable server, bad credentials...) as one line naming the masked URL."""
    try:
        yield
    except DBAPIError as exc:
        lines = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
        raise DatabaseError(f"{doing} {mask_url(url)}: {lines[0].strip()}") from None


def read_connection(engine: Engine) -> Connection:
    """A connection for transactions that only read (deferred BEGIN on SQLite)."""
    return engine.connect().execution_options(**{READONLY: True})


def _missing_file(url: URL) -> bool:
    """A SQLite URL naming a file that does not exist (yet)."""
    database = url.database
    return (
        url.get_backend_name() == "sqlite"
        and sqlitefile.is_file(database)
        and not Path(str(database)).expanduser().exists()
    )


@contextmanager
def peek(url: str, *tables: Any) -> Iterator[Optional[Connection]]:
    """A read-only connection for a dry run, which creates nothing; None where there is nothing
    to read yet: no SQLite file, or not all of ``tables`` (ORM classes) in the database.

    Driver errors (unreachable server, bad credentials) become one line naming the masked URL.
    """
    engine = make_engine(url, readonly=True)
    try:
        if _missing_file(engine.url):
            yield None
            return
        with _reported(url, "cannot read"), read_connection(engine) as conn:
            present = inspect(conn)
            yield conn if all(present.has_table(t.__tablename__) for t in tables) else None
    finally:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """An ORM session in one transaction: committed on success, rolled back on an exception."""
    with Session(engine) as session, session.begin():
        yield session


# ---------------------------------------------------------------------------- schema
def _alembic_config() -> Config:
    cfg = Config()
    location = str(files("invssl._migrations"))
    cfg.set_main_option("script_location", location.replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    """The schema revision this version of invssl writes."""
    head = _script().get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def current_revision(engine: Engine) -> Optional[str]:
    """The database's schema revision; None for a database invssl has never written to."""
    with read_connection(engine) as conn:
        return _revision(conn)


def _older_schema(url: str, rev: Optional[str]) -> SchemaMismatch:
    return SchemaMismatch(
        f"{mask_url(url)} is at schema revision {rev or 'base'}, this invssl needs "
        f"{head_revision()}: upgrade its schema first",
        where=mask_url(url),
    )


def _check_known(rev: Optional[str], url: str) -> None:
    if rev is not None and rev not in {s.revision for s in _script().walk_revisions()}:
        raise DatabaseError(
            f"{mask_url(url)} is at schema revision {rev}, unknown to this invssl: it was "
            "written by a newer version; upgrade invssl to use it"
        )


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    # Alembic logs each step at INFO; an application that logs INFO should not see them.
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _revision(conn: Connection) -> Optional[str]:
    with _quiet_alembic():
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(url: str) -> None:
    """Create the schema in an empty database or bring an older one to this version's head."""
    _migrate(url)


def _migrate(url: str) -> None:
    engine = make_engine(url, migrating=True)
    try:
        with _reported(url, "cannot upgrade"), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Workers starting together on an empty database: one migrates, the others wait
                # here and then find the schema at head.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            rev = _revision(conn)
            _check_known(rev, url)
            if rev == head_revision():
                return
            if rev is None:
                present = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
                if present:
                    raise DatabaseError(
                        f"{mask_url(url)} has tables {', '.join(sorted(present))} but no "
                        f"{VERSION_TABLE} table: not an invssl database, or a damaged one"
                    )
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            with _quiet_alembic():
                command.upgrade(cfg, "head")
            if conn.dialect.name == "sqlite":
                broken = conn.execute(text("PRAGMA foreign_key_check")).all()
                if broken:
                    raise DatabaseError(
                        f"upgrading {mask_url(url)} would break {len(broken)} foreign key(s) "
                        f"(first in table {broken[0][0]}); the database was left unchanged"
                    )
    finally:
        engine.dispose()


def open_engine(url: str, *, upgrade: bool = True) -> Engine:
    """An engine on ``url`` with the schema at this version's head.

    An empty database gets the schema. One at an older revision is upgraded when ``upgrade`` is
    true and refused otherwise (with the command that upgrades it); one at a revision this
    version does not know (written by a newer invssl) is refused.
    """
    engine = make_engine(url)
    try:
        with _reported(url, "cannot open"), read_connection(engine) as conn:
            # A version table, even one without a row (downgraded to base), marks a database
            # that invssl has written to: only a database without one counts as empty.
            versioned = inspect(conn).has_table(VERSION_TABLE)
            rev = _revision(conn)
        if rev == head_revision():
            return engine
        _check_known(rev, url)
        if versioned and not upgrade:
            raise _older_schema(url, rev)
        _migrate(url)
    except BaseException:
        engine.dispose()
        raise
    return engine


def open_existing(url: str) -> Engine:
    """An engine on an existing database at this version's schema, for reading.

    Nothing is created, migrated or written: a missing SQLite file or an empty database is an
    error, and one at another schema revision is refused with the command that upgrades it.
    """
    if _missing_file(_parse(url)):
        raise DatabaseError(f"no results database at {mask_url(url)}")
    engine = make_engine(url, readonly=True)
    try:
        with _reported(url, "cannot open"), read_connection(engine) as conn:
            versioned = inspect(conn).has_table(VERSION_TABLE)
            rev = _revision(conn)
        if rev != head_revision():
            _check_known(rev, url)
            if not versioned:
                raise DatabaseError(f"no invssl results in {mask_url(url)}: a sweep creates them")
            raise _older_schema(url, rev)
    except BaseException:
        engine.dispose()
        raise
    return engine
