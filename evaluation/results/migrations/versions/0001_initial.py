"""Initial schema: runs, layer allocations, task metrics, artefacts, tags.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_id(table: str) -> list[sa.SchemaItem]:
    """The ``run_id`` column and its cascading foreign key."""
    return [
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f(f"fk_{table}_run_id_runs"), ondelete="CASCADE"),
    ]


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_key", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("model_hash", sa.String(length=128), nullable=True),
        sa.Column("checkpoint", sa.String(length=1024), nullable=True),
        sa.Column("dense", sa.Boolean(), nullable=False),
        sa.Column("pruner", sa.String(length=64), nullable=True),
        sa.Column("scorer", sa.String(length=64), nullable=True),
        sa.Column("allocator", sa.String(length=64), nullable=True),
        sa.Column("target_sparsity", sa.Double(), nullable=False),
        sa.Column("measured_sparsity", sa.Double(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("code_version", sa.String(length=64), nullable=True),
        sa.Column("git_hash", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("peak_memory_mb", sa.Double(), nullable=True),
        sa.Column("evaluated_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("run_key", name=op.f("uq_runs_run_key")),
    )
    op.create_index(op.f("ix_runs_model"), "runs", ["model"])
    op.create_table(
        "layer_allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        *_run_id("layer_allocations"),
        sa.Column("layer", sa.String(length=255), nullable=False),
        sa.Column("tower", sa.String(length=64), nullable=True),
        sa.Column("block", sa.String(length=255), nullable=True),
        sa.Column("target", sa.Double(), nullable=True),
        sa.Column("measured", sa.Double(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layer_allocations")),
        sa.UniqueConstraint("run_id", "layer", name=op.f("uq_layer_allocations_run_id")),
    )
    op.create_table(
        "task_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        *_run_id("task_metrics"),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("filter", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("stderr", sa.Double(), nullable=True),
        sa.Column("n_samples", sa.Integer(), nullable=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=True),
        sa.Column("task_version", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_metrics")),
        sa.UniqueConstraint("run_id", "task", "metric", "filter", name=op.f("uq_task_metrics_run_id")),
    )
    op.create_index("ix_task_metrics_task_metric", "task_metrics", ["task", "metric"])
    op.create_table(
        "artefacts",
        sa.Column("id", sa.Integer(), nullable=False),
        *_run_id("artefacts"),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artefacts")),
        sa.UniqueConstraint("run_id", "kind", "path", name=op.f("uq_artefacts_run_id")),
    )
    op.create_table(
        "run_tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        *_run_id("run_tags"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_tags")),
        sa.UniqueConstraint("tag", name=op.f("uq_run_tags_tag")),
    )
    op.create_index(op.f("ix_run_tags_run_id"), "run_tags", ["run_id"])


def downgrade() -> None:
    for table in ("run_tags", "artefacts", "task_metrics", "layer_allocations", "runs"):
        op.drop_table(table)
