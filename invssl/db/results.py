"""Read-only queries for reports, listings and progress displays.

Kept apart from ``queue.py`` (the workers' transactions): nothing here writes. Each query is
retried like the queue's (see ``retry.py``): a sweep's display polls ``ended_jobs`` for as long
as its workers ride out a database restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Optional

from sqlalchemy import Engine, select

from invssl.db.models import EPOCH_METRICS, Epoch, Job, Sweep, SweepJob
from invssl.db.retry import retried
from invssl.db.session import read_connection
from invssl.errors import UnknownNameError

_CHUNK = 500
_JOB_COLUMNS = (Job.id, Job.key, Job.status, Job.config, Job.result, Job.attempts, Job.epochs_done,
                Job.error, Job.finished_at)


@retried
def sweep_names(engine: Engine) -> list[str]:
    with read_connection(engine) as conn:
        return [r[0] for r in conn.execute(select(Sweep.name).order_by(Sweep.id))]


@retried
def sweep_spec(engine: Engine, name: str) -> Optional[dict[str, Any]]:
    """The spec the sweep called ``name`` was last enqueued with, or None for a new name."""
    with read_connection(engine) as conn:
        spec = conn.execute(select(Sweep.spec).where(Sweep.name == name)).scalar()
    return None if spec is None else json.loads(spec)


@retried
def job_rows(engine: Engine, sweep: Optional[str] = None, *,
             status: Optional[str] = None) -> list[dict[str, Any]]:
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
def ended_jobs(engine: Engine, sweep_id: int) -> list[dict[str, Any]]:
    """Done and failed jobs of a sweep: id, key, status, config, result, error."""
    with read_connection(engine) as conn:
        query = (select(Job.id, Job.key, Job.status, Job.config, Job.result, Job.error)
                 .join(SweepJob, SweepJob.job_id == Job.id)
                 .where(SweepJob.sweep_id == sweep_id, Job.status.in_(("done", "failed")))
                 .order_by(Job.id))
        return [dict(r._mapping) for r in conn.execute(query)]


@retried
def epoch_rows(engine: Engine, job_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Per-epoch rows of the given jobs in (job_id, epoch) order, ``extra`` as stored."""
    ids = sorted({int(i) for i in job_ids})
    rows: list[dict[str, Any]] = []
    with read_connection(engine) as conn:
        for lo in range(0, len(ids), _CHUNK):
            chunk = ids[lo:lo + _CHUNK]
            query = (select(Epoch.job_id, Epoch.epoch, Epoch.attempt,
                            *(getattr(Epoch, m) for m in EPOCH_METRICS), Epoch.extra)
                     .where(Epoch.job_id.in_(chunk)).order_by(Epoch.job_id, Epoch.epoch))
            rows.extend(dict(r._mapping) for r in conn.execute(query))
    return rows
