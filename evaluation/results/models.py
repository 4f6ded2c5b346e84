"""SQLAlchemy models of the results database. Alembic migrations (migrations/) create exactly these tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so that migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """One evaluated model: dense baseline or pruned, with everything needed to reproduce it."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_key: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    model_hash: Mapped[str | None] = mapped_column(String(128))
    checkpoint: Mapped[str | None] = mapped_column(String(1024))
    dense: Mapped[bool]
    pruner: Mapped[str | None] = mapped_column(String(64))
    scorer: Mapped[str | None] = mapped_column(String(64))
    allocator: Mapped[str | None] = mapped_column(String(64))
    # the full method identity (results document's ``ecoflap.method``) and its sha256; None: dense
    method: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    method_key: Mapped[str | None] = mapped_column(String(64), index=True)
    # the settings of the method that leaderboard queries filter or group by (None: unknown or dense)
    nm: Mapped[str | None] = mapped_column(String(16))
    max_sparsity: Mapped[float | None]
    granularity: Mapped[str | None] = mapped_column(String(16))
    aggregation: Mapped[str | None] = mapped_column(String(16))
    per_tower: Mapped[bool | None]
    target_sparsity: Mapped[float]
    measured_sparsity: Mapped[float | None]
    config: Mapped[dict[str, Any]]
    seeds: Mapped[dict[str, Any]]
    library_versions: Mapped[dict[str, Any]]
    code_version: Mapped[str | None] = mapped_column(String(64))
    git_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    timings: Mapped[dict[str, Any]]
    peak_memory_mb: Mapped[float | None]
    evaluated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    allocation: Mapped[list[LayerAllocation]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="LayerAllocation.id"
    )
    metrics: Mapped[list[TaskMetric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="TaskMetric.id"
    )
    artefacts: Mapped[list[Artefact]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Artefact.id"
    )
    tags: Mapped[list[RunTag]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="RunTag.tag"
    )


class LayerAllocation(Base):
    """The sparsity one layer was given (target) and reached (measured)."""

    __tablename__ = "layer_allocations"
    __table_args__ = (UniqueConstraint("run_id", "layer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    layer: Mapped[str] = mapped_column(String(255))
    tower: Mapped[str | None] = mapped_column(String(64))
    block: Mapped[str | None] = mapped_column(String(255))
    target: Mapped[float | None]
    measured: Mapped[float | None]
    params: Mapped[int | None] = mapped_column(BigInteger)

    run: Mapped[Run] = relationship(back_populates="allocation")


class TaskMetric(Base):
    """One metric of one task (lm-eval's ``"<metric>,<filter>"`` key) with its standard error."""

    __tablename__ = "task_metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "task", "metric", "filter"),
        Index("ix_task_metrics_task_metric", "task", "metric"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(128))
    filter: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None]
    stderr: Mapped[float | None]
    n_samples: Mapped[int | None]
    higher_is_better: Mapped[bool | None]
    task_version: Mapped[str | None] = mapped_column(String(64))

    run: Mapped[Run] = relationship(back_populates="metrics")


class Artefact(Base):
    """A file a run produced or came from: results JSON, checkpoint, allocation file."""

    __tablename__ = "artefacts"
    __table_args__ = (UniqueConstraint("run_id", "kind", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))

    run: Mapped[Run] = relationship(back_populates="artefacts")


class RunTag(Base):
    """A name for one run (``baseline``, ``v0.1``); a tag names one run at a time."""

    __tablename__ = "run_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), unique=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)

    run: Mapped[Run] = relationship(back_populates="tags")
