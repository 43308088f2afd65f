"""The job queue: enqueue, claim, heartbeat, record, finish (the reads are in ``reads.py``).

Every function is one short transaction, run again from its start when the connection to a
restarting server is lost (``retry.retried``). A worker's writes carry the attempt number it
claimed; they apply only while the job is still running under that attempt, so a worker
presumed dead (and its job handed to another) cannot overwrite the retry: it gets
``StaleAttemptError``.
Times come from the database's clock (``sql.now``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    or_,
    select,
    text,
    update,
)

from invssl.db import sql
from invssl.db.models import EPOCH_METRICS, Checkpoint, Epoch, Job, Sweep, SweepJob
from invssl.db.retry import retried
from invssl.db.session import read_connection
from invssl.errors import InvsslError

# Any constant shared by every invssl process ("invq" in ASCII).
_ENQUEUE_LOCK_KEY = 0x696E7671


class StaleAttemptError(InvsslError):
    """The job is no longer running under this attempt (reaped and handed to another worker)."""


@dataclass(frozen=True)
class Claim:
    job_id: int
    key: str
    attempt: int
    config: dict[str, Any]
    epochs_done: int


# ---------------------------------------------------------------------------- enqueue
@retried
def ensure_sweep(engine: Engine, name: str, spec: dict[str, Any]) -> int:
    """The sweep called ``name``, created if new; its spec becomes ``spec`` (a grid may grow)."""
    with engine.begin() as conn:
        stmt = sql.insert(conn, Sweep).values(
            name=name, spec=json.dumps(spec, sort_keys=True), created_at=sql.now(conn)
        )
        stmt = stmt.on_conflict_do_update(index_elements=[Sweep.name], set_={"spec": stmt.excluded.spec})
        return conn.execute(stmt.returning(Sweep.id)).scalar_one()


@retried
def enqueue(engine: Engine, sweep_id: int, jobs: list[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
    """Add ``(key, config)`` jobs that are not stored yet and link all of them to the sweep.

    Returns ``(new, already present)``. Safe to run concurrently with itself: a job is inserted
    only if its key is absent, so two sweeps enqueueing the same job store it once.
    """
    unique = dict(jobs)
    if not unique:
        return 0, 0
    rows = [
        {
            "key": key,
            "config": config,
            "topology": config.get("topology"),
            "dataset": config.get("dataset"),
            "n_labeled": config.get("n_labeled"),
            "seed": config.get("seed"),
        }
        for key, config in unique.items()
    ]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Enqueues of overlapping lists in different orders would wait on each other's new
            # keys and die as deadlocks; one at a time (as on SQLite) keeps the caller's order,
            # which is the claim order.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ENQUEUE_LOCK_KEY})
        stmt = sql.insert(conn, Job).values(status="pending", attempts=0, epochs_done=0, created_at=sql.now(conn))
        stmt = stmt.on_conflict_do_nothing(index_elements=[Job.key]).returning(Job.id)
        new = len(conn.execute(stmt, rows).all())
        ids = sorted(
            job_id
            for chunk in sql.chunks(list(unique))
            for job_id in conn.scalars(select(Job.id).where(Job.key.in_(chunk)))
        )
        link = sql.insert(conn, SweepJob).on_conflict_do_nothing()
        conn.execute(link, [{"sweep_id": sweep_id, "job_id": job_id} for job_id in ids])
    return new, len(unique) - new


# ------------------------------------------------------------------------------ claim
@retried
def claim(engine: Engine, *, worker: str, host: str, pid: int, sweep_id: Optional[int] = None) -> Optional[Claim]:
    """Take the oldest pending job (of ``sweep_id``, if given) for this worker, or None."""
    with engine.begin() as conn:
        pick = select(Job.id).where(Job.status == "pending")
        if sweep_id is not None:
            pick = pick.where(Job.id.in_(select(SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)))
        # SKIP LOCKED lets concurrent workers on PostgreSQL take different jobs without waiting;
        # SQLite ignores it, its BEGIN IMMEDIATE already lets one writer at a time in.
        pick = pick.order_by(Job.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
        now = sql.now(conn)
        stmt = (
            update(Job)
            .where(Job.id == pick)
            .values(
                status="running",
                attempts=Job.attempts + 1,
                worker=worker,
                host=host,
                pid=pid,
                heartbeat_at=now,
                started_at=now,
                finished_at=None,
                error=None,
            )
            .returning(Job.id, Job.key, Job.attempts, Job.config, Job.epochs_done)
        )
        row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    return Claim(job_id=row.id, key=row.key, attempt=row.attempts, config=row.config, epochs_done=row.epochs_done)


def _guarded(conn: Connection, job_id: int, attempt: int, **values: Any) -> None:
    """Update the job if it still runs under ``attempt``; else raise (the transaction rolls back)."""
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
        .values(heartbeat_at=sql.now(conn), **values)
    )
    if result.rowcount != 1:
        raise StaleAttemptError(f"job {job_id} is no longer running as attempt {attempt}")


@retried
def heartbeat(engine: Engine, job_id: int, attempt: int) -> None:
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt)


@retried
def set_job_info(
    engine: Engine, job_id: int, attempt: int, *, env: Optional[dict[str, Any]] = None, split: Optional[str] = None
) -> None:
    """Store what produced the result (``env``) and the labeled/validation split (JSON text)."""
    values: dict[str, Any] = {}
    if env is not None:
        values["env"] = env
    if split is not None:
        values["split"] = split
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt, **values)


def _store_checkpoint(conn: Connection, job_id: int, attempt: int, epoch: int, data: bytes) -> None:
    conn.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    conn.execute(
        sql.insert(conn, Checkpoint).values(
            job_id=job_id, epoch=epoch, attempt=attempt, data=data, created_at=sql.now(conn)
        )
    )


@retried
def record_epoch(
    engine: Engine, job_id: int, attempt: int, epoch: int, metrics: dict[str, Any], checkpoint: Optional[bytes]
) -> None:
    """Store epoch ``epoch``'s metrics and, in the same transaction, the checkpoint after it.

    Metrics other than the table's columns go to ``extra``. Rows of this and later epochs from
    an earlier attempt (one that restarted from an older checkpoint) are replaced.
    """
    known = {k: (None if metrics.get(k) is None else float(metrics[k])) for k in EPOCH_METRICS}
    extra = {k: v for k, v in metrics.items() if k not in EPOCH_METRICS} or None
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt, epochs_done=epoch)
        conn.execute(delete(Epoch).where(Epoch.job_id == job_id, Epoch.epoch >= epoch))
        conn.execute(sql.insert(conn, Epoch).values(job_id=job_id, epoch=epoch, attempt=attempt, extra=extra, **known))
        if checkpoint is not None:
            _store_checkpoint(conn, job_id, attempt, epoch, checkpoint)


@retried
def save_checkpoint(engine: Engine, job_id: int, attempt: int, data: bytes) -> None:
    """Store a checkpoint taken within the epoch after ``epochs_done`` (before a release)."""
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt)
        done = conn.scalar(select(Job.epochs_done).where(Job.id == job_id))
        _store_checkpoint(conn, job_id, attempt, int(done or 0), data)


@retried
def load_checkpoint(engine: Engine, job_id: int) -> Optional[tuple[int, bytes]]:
    """``(epoch, data)`` of the job's latest checkpoint, or None."""
    with read_connection(engine) as conn:
        row = conn.execute(select(Checkpoint.epoch, Checkpoint.data).where(Checkpoint.job_id == job_id)).one_or_none()
    return None if row is None else (row.epoch, bytes(row.data))


@retried
def finish(engine: Engine, job_id: int, attempt: int, result: dict[str, Any]) -> None:
    """Mark the job done with ``result``, its final epoch's metrics.

    A job resumed from the checkpoint of its last epoch (its worker died before this call)
    trains nothing and has no metrics in hand: its result is rebuilt from that epoch's row, so
    a done job never stores an empty result.
    """
    with engine.begin() as conn:
        if not result:
            result = _recorded_result(conn, job_id)
        _guarded(conn, job_id, attempt, status="done", result=result, error=None, finished_at=sql.now(conn))


def _recorded_result(conn: Connection, job_id: int) -> dict[str, Any]:
    columns = [getattr(Epoch, k) for k in EPOCH_METRICS]
    row = conn.execute(
        select(*columns, Epoch.extra)
        .join(Job, Job.id == Epoch.job_id)
        .where(Epoch.job_id == job_id, Epoch.epoch == Job.epochs_done)
    ).one_or_none()
    if row is None:
        raise InvsslError(f"job {job_id} finished without a recorded epoch to take its result from")
    result = {k: getattr(row, k) for k in EPOCH_METRICS if getattr(row, k) is not None}
    return {**result, **(row.extra or {})}


@retried
def fail(engine: Engine, job_id: int, attempt: int, error: str) -> None:
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt, status="failed", error=error, finished_at=sql.now(conn))


@retried
def release(engine: Engine, job_id: int, attempt: int) -> None:
    """Hand the job back to the queue; the next claim resumes from its checkpoint."""
    with engine.begin() as conn:
        _guarded(conn, job_id, attempt, status="pending")


# ----------------------------------------------------------------------- maintenance
@retried
def reap(
    engine: Engine, *, stale_after_s: float, host: Optional[str] = None, alive: Optional[Callable[[int], bool]] = None
) -> list[int]:
    """Put running jobs of dead workers back to pending; returns their ids.

    Dead means no heartbeat for ``stale_after_s`` seconds or, for jobs of ``host`` when
    ``alive`` is given, a pid for which ``alive(pid)`` is false.
    """
    with engine.begin() as conn:
        dead: list[ColumnElement[bool]] = [Job.heartbeat_at < sql.now(conn, stale_after_s)]
        if host is not None and alive is not None:
            local = conn.execute(
                select(Job.id, Job.attempts, Job.pid).where(Job.status == "running", Job.host == host)
            ).all()
            # The attempt pins the exact claim whose process was found dead.
            dead += [
                and_(Job.id == r.id, Job.attempts == r.attempts)
                for r in local
                if r.pid is not None and not alive(r.pid)
            ]
        stmt = update(Job).where(Job.status == "running", or_(*dead)).values(status="pending").returning(Job.id)
        return sorted(conn.scalars(stmt))


@retried
def retry_failed(engine: Engine, *, max_attempts: int) -> int:
    """Put failed jobs tried fewer than ``max_attempts`` times back to pending; returns how many."""
    with engine.begin() as conn:
        result = conn.execute(
            update(Job)
            .where(Job.status == "failed", Job.attempts < max_attempts)
            .values(status="pending", error=None, finished_at=None)
        )
        return result.rowcount
