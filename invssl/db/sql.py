"""SQL pieces that the queue's writes and the reads share, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Interval, func, literal
from sqlalchemy.dialects import postgresql, sqlite

from invssl.db.models import UTCDateTime

# Rows per statement when a list of keys goes into an IN (...) clause.
_CHUNK = 500


def now(conn: Connection, ago_s: float = 0.0) -> ColumnElement[datetime]:
    """The database's current UTC time, minus ``ago_s`` seconds, as a SQL expression.

    Times come from the database's clock, so hosts with skewed clocks agree on heartbeat ages.
    """
    if conn.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{-ago_s:+.6f} seconds", type_=UTCDateTime)
    current = func.now(type_=UTCDateTime)
    return current - literal(timedelta(seconds=ago_s), Interval()) if ago_s else current


def insert(conn: Connection, table: Any) -> Any:
    """INSERT with ON CONFLICT support: both back-ends have it, under their own dialect."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
