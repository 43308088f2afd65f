"""Riding out a database restart: bounded retries of short transactions on lost connections.

A worker holds its engine for days; a PostgreSQL server restarted in between drops every
connection. Each queue function is one short transaction, so it can be run again from the
start: a connection error (the server refusing, closing, or shutting down) is retried with
backoff for up to ``$INVSSL_DB_RETRY_S`` seconds (60 by default), after which ``DatabaseLost``
says in one line that the database stays away. Other operational errors (a read-only file,
a full disk) are not transient and become one-line ``DatabaseError``s at once.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from invssl.db.session import mask_url
from invssl.errors import DatabaseError, DatabaseLost

DEFAULT_RETRY_S = 60.0
_FIRST_WAIT_S, _MAX_WAIT_S = 0.2, 5.0
# SQLSTATEs of a server going away: connection exceptions (class 08), administrator or crash
# shutdown, and "the database system is starting up / shutting down".
_GOING_AWAY = ("08", "57P01", "57P02", "57P03")

F = TypeVar("F", bound=Callable[..., Any])


def retry_window_s() -> float:
    raw = os.environ.get("INVSSL_DB_RETRY_S", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_RETRY_S
    except ValueError:
        raise DatabaseError(f"INVSSL_DB_RETRY_S={raw!r}: expected a number of seconds") from None


def transient(exc: DBAPIError) -> bool:
    """A lost or refused connection to a server, which a restart explains."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError) or "psycopg" not in type(exc.orig).__module__:
        return False  # SQLite waits on its busy timeout itself; its errors do not pass
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or state.startswith(_GOING_AWAY)


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0].strip() if lines else type(exc.orig).__name__


def retried(fn: F) -> F:
    """Run ``fn(engine, ...)`` again while its connection errors last (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(engine: Engine, *args: Any, **kwargs: Any) -> Any:
        where = mask_url(engine.url.render_as_string(hide_password=False))
        deadline = None
        wait = _FIRST_WAIT_S
        while True:
            try:
                return fn(engine, *args, **kwargs)
            except DBAPIError as exc:
                if not transient(exc):
                    if isinstance(exc, OperationalError):  # the environment, not invssl
                        raise DatabaseError(f"{where}: {_first_line(exc)}") from None
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + retry_window_s()
                if now >= deadline:
                    raise DatabaseLost(
                        f"lost the results database {where} for {retry_window_s():.0f}s: {_first_line(exc)}"
                    ) from None
                time.sleep(min(wait, deadline - now))
                wait = min(wait * 2, _MAX_WAIT_S)

    return wrapper  # type: ignore[return-value]
