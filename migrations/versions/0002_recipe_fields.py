"""Jobs stored before the training recipe became configurable get the recipe they ran with.

Input scaling, initialisation, learning-rate warm-up and collapse patience joined the job
config, some with new defaults (Glorot, a stop after two collapsed epochs). A job stored
earlier ran with standardised inputs, Kaiming initialisation, no warm-up and no early stop, so
those values are written into
its stored config, and its key, the sha256 of that config without the runtime fields, is
computed again: reading the job back then gives the config it really ran, and running its
experiment file again finds it under the same key as a new job with that recipe would have.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: what those jobs ran with, and the fields a key leaves out.
LEGACY_RECIPE: dict[str, Any] = {"input_scaling": "standardize", "init": "kaiming",
                                 "lr_warmup": 0.0, "collapse_patience": 0}
RUNTIME_FIELDS = ("data_root", "download", "device")

_jobs = sa.table("jobs", sa.column("id", sa.Integer()), sa.column("key", sa.String(64)),
                 sa.column("config", sa.JSON()))


def _key(config: dict[str, Any]) -> str:
    identity = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _rewrite(change: Any) -> None:
    bind = op.get_bind()
    for job_id, config in bind.execute(sa.select(_jobs.c.id, _jobs.c.config)).all():
        new = change(dict(config))
        if new != config:
            bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id)
                         .values(config=new, key=_key(new)))


def upgrade() -> None:
    _rewrite(lambda config: {**LEGACY_RECIPE, **config})


def _legacy_only(config: dict[str, Any]) -> dict[str, Any]:
    # Revision 0001 cannot tell a job with another recipe from its legacy twin (same key).
    if any(config.get(k, v) != v for k, v in LEGACY_RECIPE.items()):
        raise RuntimeError("jobs that ran with a configured recipe (input_scaling, init, "
                           "lr_warmup, collapse_patience) have no place at revision 0001")
    return {k: v for k, v in config.items() if k not in LEGACY_RECIPE}


def downgrade() -> None:
    _rewrite(_legacy_only)
