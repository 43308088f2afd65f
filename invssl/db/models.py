"""The results database's tables as SQLAlchemy typed mappings.

This module is the reference the migrations are checked against (``tests/test_db.py`` compares
an upgraded database with this metadata); the migrations never import it, so an old revision
keeps describing the schema it created.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")

# Constraint names must be stable across back-ends so that a later migration can drop or alter
# them by name (SQLite batch mode needs a name for everything it recreates).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both back-ends.

    PostgreSQL keeps the zone, SQLite stores naive text; without this a value read back from
    SQLite would be naive and could not be compared with one read from PostgreSQL or with
    ``datetime.now(timezone.utc)``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the results database stores UTC-aware times only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        float: Float(),
    }


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]
    spec: Mapped[str] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(column("status").in_(STATUSES), name="status"),
        # The claim query scans pending jobs in id order.
        Index(None, "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer)
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    host: Mapped[Optional[str]] = mapped_column(String(200))
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    heartbeat_at: Mapped[Optional[datetime]]
    created_at: Mapped[datetime]
    started_at: Mapped[Optional[datetime]]
    finished_at: Mapped[Optional[datetime]]
    error: Mapped[Optional[str]] = mapped_column(Text)
    result: Mapped[Optional[dict[str, Any]]]
    env: Mapped[Optional[dict[str, Any]]]
    split: Mapped[Optional[str]] = mapped_column(Text)
    # Copied from ``config`` at enqueue so that reports can filter without parsing JSON.
    topology: Mapped[Optional[str]] = mapped_column(String(100))
    dataset: Mapped[Optional[str]] = mapped_column(String(100))
    n_labeled: Mapped[Optional[int]] = mapped_column(Integer)
    seed: Mapped[Optional[int]] = mapped_column(Integer)


class SweepJob(Base):
    """A job identical across sweeps is stored once and linked to each of them."""

    __tablename__ = "sweep_jobs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True)


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    loss: Mapped[Optional[float]]
    ce: Mapped[Optional[float]]
    recon: Mapped[Optional[float]]
    entropy: Mapped[Optional[float]]
    val_acc: Mapped[Optional[float]]
    test_acc: Mapped[Optional[float]]
    recon_err: Mapped[Optional[float]]
    lr: Mapped[Optional[float]]
    wall_s: Mapped[Optional[float]]
    extra: Mapped[Optional[dict[str, Any]]]


EPOCH_METRICS: tuple[str, ...] = ("loss", "ce", "recon", "entropy", "val_acc", "test_acc", "recon_err", "lr", "wall_s")


class Checkpoint(Base):
    """The latest checkpoint of each job only: older ones are never resumed from."""

    __tablename__ = "checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
