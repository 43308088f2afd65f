"""SQLite files: how invssl connects to one, and the files it refuses or stops on.

Every write transaction starts with ``BEGIN IMMEDIATE`` so that concurrent workers queue on the
busy timeout instead of failing with "database is locked". A file on a network file system is
refused (its locking is unreliable). A file deleted or replaced while in use stops the next
transaction: SQLite itself would go on writing into the unlinked file and a new connection
would create an empty database in its place. Reads of a file in a read-only directory, where
WAL mode cannot create its ``-shm`` file, open it read-only or immutable.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from sqlalchemy import Connection, Engine, event

from invssl.errors import DatabaseError, DatabaseLost

BUSY_TIMEOUT_S = 30.0
# Execution option: a transaction that only reads may start deferred on SQLite, so that
# `invssl status` does not queue behind the workers' write lock.
READONLY = "invssl_readonly"
# File systems whose locking SQLite cannot rely on.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
    }
)


def is_file(database: Optional[str]) -> bool:
    """Whether a SQLite URL's database part names a plain file (not memory, not a URI)."""
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


# ------------------------------------------------------------------- network file systems
def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def network_fs_type(path: str, mounts: str) -> Optional[str]:
    """The network file system type ``path`` lives on, per a /proc/mounts text; else None."""
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point, fs_type = _unescape_mount_field(fields[1]), fields[2]
        prefix = mount_point.rstrip("/") + "/"
        if (path == mount_point or path.startswith(prefix)) and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type if best_type in NETWORK_FS_TYPES else None


def refuse_network_fs(database: Optional[str]) -> None:
    if not is_file(database):
        return
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:  # not Linux: nothing to check against
        return
    path = str(Path(str(database)).expanduser().resolve())
    fs_type = network_fs_type(path, mounts)
    if fs_type:
        raise DatabaseError(
            f"the SQLite file {path} is on a network file system ({fs_type}), where its locking "
            "is unreliable; workers on several machines need PostgreSQL "
            "(a URL postgresql+psycopg://user@host/db)"
        )


# ---------------------------------------------------------------------- permissions
def refuse_read_only(database: Optional[str]) -> None:
    """Fail in one line when this process cannot write the file or create files beside it."""
    if not is_file(database):
        return
    path = Path(str(database)).expanduser().resolve()
    if path.exists() and not os.access(path, os.W_OK):
        raise DatabaseError(
            f"the SQLite file {path} is read-only: sweep, worker, resume and "
            "db upgrade write to it (status, show and report can read it)"
        )
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseError(
            f"the directory {folder} is read-only: SQLite writes its journal "
            f"({path.name}-wal, -shm) beside the database"
        )


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(str(path.resolve()))}?{query}"


def _read_uri(path: Path) -> Optional[str]:
    """A read-only URI when WAL mode could not open the file normally (directory read-only)."""
    if os.access(path.parent, os.W_OK | os.X_OK):
        return None
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return _uri(path, mode="ro")  # committed pages still in the WAL: read through it
    # Without a WAL nobody is writing (a writer would need this directory): nothing can change.
    return _uri(path, mode="ro", immutable="1")


# ---------------------------------------------------------------------------- engines
def configure(engine: Engine, *, foreign_keys: bool, readonly: bool, guard: bool) -> None:
    """invssl's connection settings on a SQLite engine (see the module's docstring)."""
    database = engine.url.database
    path = Path(str(database)).expanduser().resolve() if is_file(database) else None
    identity: dict[str, tuple[int, int]] = {}

    # pysqlite's own transaction handling would BEGIN (deferred) lazily and let two writers
    # deadlock into "database is locked"; take over BEGIN as the SQLAlchemy docs describe.
    @event.listens_for(engine, "do_connect")
    def _do_connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if path is None:
            return
        uri = _read_uri(path) if readonly else (_uri(path, mode="rw") if identity else None)
        if uri is not None:  # mode=rw: a deleted file is an error, not a new empty database
            cargs[:] = [uri]
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not readonly:
            _set_wal(cursor)
            # WAL makes NORMAL durable against application crashes; only power loss can drop
            # the latest commits, which a resumed job recomputes.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()
        if guard and path is not None and not identity:
            st = os.stat(path)
            identity["file"] = (st.st_dev, st.st_ino)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if guard and path is not None and identity:
            _check_same_file(path, identity["file"])
        conn.exec_driver_sql("BEGIN" if readonly or conn.get_execution_options().get(READONLY) else "BEGIN IMMEDIATE")


def _set_wal(cursor: Any) -> None:
    """Switch to WAL, waiting for the other connections of a database being created: the switch
    needs the file alone, and SQLite reports "database is locked" at once instead of calling the
    busy handler when waiting could deadlock (two processes opening a new file together)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _check_same_file(path: Path, identity: tuple[int, int]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatabaseLost(
            f"the SQLite file {path} was deleted while in use: stopping (restore the file, then `invssl resume`)"
        ) from None
    if (st.st_dev, st.st_ino) != identity:
        raise DatabaseLost(f"the SQLite file {path} was replaced by another file while in use: stopping")
