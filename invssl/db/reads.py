"""Every read of the results database: reports, listings, status, show, estimates, displays.

Kept apart from ``queue.py`` (the workers' transactions): nothing here writes. Each query is
retried like the queue's (see ``retry.py``): a sweep's display polls ``ended_jobs`` for as long
as its workers ride out a database restart. A command that reads opens the database with
``reading``: one engine, disposed when the command ends. A dry run, which must not even create
the file, reads through ``session.peek``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, Union

from sqlalchemy import Engine, func, inspect, select

from invssl.db import sql
from invssl.db.models import EPOCH_METRICS, STATUSES, Epoch, Job, Sweep, SweepJob
from invssl.db.retry import retried
from invssl.db.session import (
    mask_url,
    open_existing,
    peek,
    read_connection,
    resolve_url,
)
from invssl.errors import InvsslError, UnknownNameError
from invssl.labels import job_label

_JOB_COLUMNS = (
    Job.id,
    Job.key,
    Job.status,
    Job.config,
    Job.result,
    Job.attempts,
    Job.epochs_done,
    Job.error,
    Job.finished_at,
)
# What a status row shows of its job; ``config`` gives way to the job's label.
_SHOWN = (Job.id, Job.key, Job.topology, Job.dataset, Job.n_labeled, Job.seed, Job.config)


@contextmanager
def reading(url: Optional[str]) -> Iterator[Engine]:
    """The existing results database at ``url`` (default: ``session.resolve_url``'s) for one
    command: nothing created, migrated or written; the engine disposed when the command ends."""
    engine = open_existing(resolve_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def where(url: Optional[str]) -> str:
    """The database a command uses, as invssl prints it (password masked)."""
    return mask_url(resolve_url(url))


# ------------------------------------------------------------------------------- sweeps
@retried
def sweep_spec(engine: Engine, name: str) -> Optional[dict[str, Any]]:
    """The spec the sweep called ``name`` was last enqueued with, or None for a new name."""
    with read_connection(engine) as conn:
        spec = conn.execute(select(Sweep.spec).where(Sweep.name == name)).scalar()
    return None if spec is None else json.loads(spec)


@retried
def status_counts(engine: Engine, sweep: Optional[str] = None) -> dict[str, int]:
    """Jobs per status (every status present, zeros included), of one sweep if named."""
    stmt = select(Job.status, func.count()).group_by(Job.status)
    if sweep is not None:
        stmt = stmt.join(SweepJob, SweepJob.job_id == Job.id).join(Sweep, Sweep.id == SweepJob.sweep_id)
        stmt = stmt.where(Sweep.name == sweep)
    with read_connection(engine) as conn:
        counts = {status: n for status, n in conn.execute(stmt)}
    return {status: counts.get(status, 0) for status in STATUSES}


@retried
def ended_jobs(engine: Engine, sweep_id: int) -> list[dict[str, Any]]:
    """Done and failed jobs of a sweep: id, key, status, config, result, error."""
    with read_connection(engine) as conn:
        query = (
            select(Job.id, Job.key, Job.status, Job.config, Job.result, Job.error)
            .join(SweepJob, SweepJob.job_id == Job.id)
            .where(SweepJob.sweep_id == sweep_id, Job.status.in_(("done", "failed")))
            .order_by(Job.id)
        )
        return [dict(r._mapping) for r in conn.execute(query)]


def sweep_epochs_after(engine: Engine, sweep_id: int, after_id: int) -> list[dict[str, Any]]:
    """Epochs of a sweep's jobs recorded after epoch row ``after_id``, in order: id, key,
    config, epoch, val_acc, test_acc, wall_s (a display of several workers follows them)."""
    with read_connection(engine) as conn:
        query = (
            select(Epoch.id, Job.key, Job.config, Epoch.epoch, Epoch.val_acc, Epoch.test_acc, Epoch.wall_s)
            .join(Job, Job.id == Epoch.job_id)
            .join(SweepJob, SweepJob.job_id == Job.id)
            .where(SweepJob.sweep_id == sweep_id, Epoch.id > after_id)
            .order_by(Epoch.id)
        )
        return [dict(r._mapping) for r in conn.execute(query)]


# ---------------------------------------------------------------------------- listings
@retried
def job_rows(engine: Engine, sweep: Optional[str] = None, *, status: Optional[str] = None) -> list[dict[str, Any]]:
    """Jobs (of one sweep, with one status, if given) in id order: id, key, status, config,
    result, attempts, epochs_done, error, finished_at. UnknownNameError for an unknown sweep."""
    with read_connection(engine) as conn:
        query = select(*_JOB_COLUMNS).order_by(Job.id)
        if status is not None:
            query = query.where(Job.status == status)
        if sweep is not None:
            sweep_id = conn.execute(select(Sweep.id).where(Sweep.name == sweep)).scalar()
            if sweep_id is None:
                known = [r[0] for r in conn.execute(select(Sweep.name).order_by(Sweep.id))]
                raise UnknownNameError(f"unknown sweep {sweep!r}; known: {', '.join(known) or 'none'}")
            query = query.join(SweepJob, SweepJob.job_id == Job.id).where(SweepJob.sweep_id == sweep_id)
        return [dict(r._mapping) for r in conn.execute(query)]


@retried
def epoch_rows(engine: Engine, job_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Per-epoch rows of the given jobs in (job_id, epoch) order, ``extra`` as stored."""
    ids = sorted({int(i) for i in job_ids})
    rows: list[dict[str, Any]] = []
    with read_connection(engine) as conn:
        for chunk in sql.chunks(ids):
            query = (
                select(
                    Epoch.job_id, Epoch.epoch, Epoch.attempt, *(getattr(Epoch, m) for m in EPOCH_METRICS), Epoch.extra
                )
                .where(Epoch.job_id.in_(chunk))
                .order_by(Epoch.job_id, Epoch.epoch)
            )
            rows.extend(dict(r._mapping) for r in conn.execute(query))
    return rows


# ------------------------------------------------------------------------------ status
def _labelled(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {**{k: v for k, v in row._asdict().items() if k != "config"}, "label": job_label(row.config or {})}
        for row in rows
    ]


@retried
def running_jobs(engine: Engine) -> list[dict[str, Any]]:
    """Running jobs with their worker, progress and heartbeat age by the database's clock."""
    with read_connection(engine) as conn:
        clock = conn.scalar(select(sql.now(conn)))
        rows = conn.execute(
            select(
                *_SHOWN, Job.worker, Job.host, Job.pid, Job.attempts, Job.epochs_done, Job.started_at, Job.heartbeat_at
            )
            .where(Job.status == "running")
            .order_by(Job.id)
        ).all()
    return [
        {**job, "heartbeat_age_s": (clock - job["heartbeat_at"]).total_seconds() if job["heartbeat_at"] else None}
        for job in _labelled(rows)
    ]


@retried
def failed_jobs(engine: Engine) -> list[dict[str, Any]]:
    with read_connection(engine) as conn:
        rows = conn.execute(
            select(*_SHOWN, Job.attempts, Job.error, Job.finished_at).where(Job.status == "failed").order_by(Job.id)
        ).all()
    return _labelled(rows)


@retried
def collapsed_jobs(engine: Engine) -> list[dict[str, Any]]:
    """Finished jobs whose network had collapsed at its last epoch (``health.py``)."""
    with read_connection(engine) as conn:
        rows = conn.execute(
            select(*_SHOWN, Job.epochs_done, Job.result).where(Job.status == "done").order_by(Job.id)
        ).all()
    return _labelled(row for row in rows if (row.result or {}).get("collapsed"))


# -------------------------------------------------------------------------------- show
@retried
def get_job(engine: Engine, key_prefix_or_id: Union[str, int]) -> dict[str, Any]:
    """One job with every column and its sweeps' names, by numeric id or unique key prefix.

    A string of digits is an id when such a job exists, else a key prefix.
    """
    ref = str(key_prefix_or_id).strip().lower()
    if not ref or any(c not in "0123456789abcdef" for c in ref):
        raise InvsslError(f"no job {key_prefix_or_id!r}: give a numeric id or a hex key prefix")
    columns = list(inspect(Job).columns)
    with read_connection(engine) as conn:
        rows = []
        if ref.isdigit():
            rows = conn.execute(select(*columns).where(Job.id == int(ref))).all()
        if not rows:
            rows = conn.execute(select(*columns).where(Job.key.startswith(ref)).limit(2)).all()
        if len(rows) != 1:
            what = "no job" if not rows else "more than one job"
            raise InvsslError(f"{what} matches {key_prefix_or_id!r}")
        job = rows[0]._asdict()
        job["sweeps"] = list(
            conn.scalars(
                select(Sweep.name)
                .join(SweepJob, SweepJob.sweep_id == Sweep.id)
                .where(SweepJob.job_id == job["id"])
                .order_by(Sweep.id)
            )
        )
    return job


@retried
def job_epochs(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    """The job's per-epoch rows in epoch order (``extra`` holds metrics beyond the columns)."""
    columns = [c for c in inspect(Epoch).columns if c.key not in ("id", "job_id")]
    with read_connection(engine) as conn:
        rows = conn.execute(select(*columns).where(Epoch.job_id == job_id).order_by(Epoch.epoch)).all()
    return [row._asdict() for row in rows]


# ---------------------------------------------------------------------------- dry runs
def done_keys_readonly(url: str, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` are done, without creating or upgrading anything."""
    with peek(url, Job) as conn:
        if conn is None:
            return set()
        return {
            key
            for chunk in sql.chunks(list(dict.fromkeys(keys)))
            for key in conn.scalars(select(Job.key).where(Job.status == "done", Job.key.in_(chunk)))
        }


def recorded_epochs(url: str, keys: Iterable[str]) -> tuple[dict[str, int], list[tuple[Any, Any, float]]]:
    """For an estimate, without creating anything: epochs finished per job of ``keys``, and
    ``(config, env, wall_s)`` of every recorded epoch whose training time is known."""
    wanted = set(keys)
    with peek(url, Job, Epoch) as conn:
        if conn is None:
            return {}, []
        done = {key: int(n) for key, n in conn.execute(select(Job.key, Job.epochs_done)) if key in wanted and n}
        query = (
            select(Job.config, Job.env, Epoch.wall_s)
            .join(Epoch, Epoch.job_id == Job.id)
            .where(Epoch.wall_s.is_not(None))
        )
        return done, [(config, env, float(wall_s)) for config, env, wall_s in conn.execute(query)]
