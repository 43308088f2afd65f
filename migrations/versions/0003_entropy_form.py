"""Jobs stored before the entropy term had a form get the form they ran with.

The job config gained ``entropy`` ("per_input", the paper's mean prediction entropy, or
"balanced", which also rewards spreading the batch over the classes). Every job stored earlier
ran with the per-input form, so it is written into its stored config and the key, the sha256 of
that config without the runtime fields, is computed again (as revision 0002 did for the recipe).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: what earlier jobs ran with, and the fields a key leaves out.
LEGACY = {"entropy": "per_input"}
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
    _rewrite(lambda config: {**LEGACY, **config})


def _legacy_only(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("entropy", "per_input") != "per_input":
        raise RuntimeError("jobs that ran with entropy: balanced have no place at revision 0002")
    return {k: v for k, v in config.items() if k not in LEGACY}


def downgrade() -> None:
    _rewrite(_legacy_only)
