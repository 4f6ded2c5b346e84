"""The full method identity of a run: ``method`` (JSON), ``method_key`` and the settings leaderboards group by.

Runs recorded before it keep their rows: a pruned run's method is backfilled from its pruner, scorer
and allocator with every other setting None (unknown), its key the sha256 of that method's canonical
JSON (what ``ecoflap.evaluation.results.method`` gives for the same document); dense runs have none.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copy of the method's fields as of this revision (a migration never imports code that may change).
FIELDS = (
    "pruner", "pruner_options", "nm", "scorer", "scorer_options", "allocator", "allocation_file", "granularity",
    "aggregation", "max_sparsity", "per_tower", "towers", "targets", "ignore", "calibration",
)  # fmt: skip
SETTINGS = {  # the method's settings with a real column: what leaderboard queries filter or group by
    "nm": sa.String(length=16),
    "max_sparsity": sa.Double(),
    "granularity": sa.String(length=16),
    "aggregation": sa.String(length=16),
    "per_tower": sa.Boolean(),
}


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("method", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("method_key", sa.String(length=64), nullable=True))
        for name, kind in SETTINGS.items():
            batch.add_column(sa.Column(name, kind, nullable=True))
        batch.create_index(op.f("ix_runs_method_key"), ["method_key"])
    _backfill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(op.f("ix_runs_method_key"))
        for name in ("method", "method_key", *SETTINGS):
            batch.drop_column(name)


def _backfill(connection: sa.Connection) -> None:
    """Each pruned run's method and key from its pruner, scorer and allocator."""
    runs = sa.table(
        "runs",
        *(sa.column(name) for name in ("id", "pruner", "scorer", "allocator")),
        sa.column("dense", sa.Boolean()),
        sa.column("method", sa.JSON(none_as_null=True)),
        sa.column("method_key", sa.String()),
    )
    pruned = sa.select(runs.c.id, runs.c.pruner, runs.c.scorer, runs.c.allocator).where(runs.c.dense == sa.false())
    found = connection.execute(pruned).all()
    values = [_legacy(*row) for row in found]
    if values:
        update = runs.update().where(runs.c.id == sa.bindparam("run_id"))
        connection.execute(update.values(method=sa.bindparam("m"), method_key=sa.bindparam("k")), values)


def _legacy(run_id: int, pruner: str | None, scorer: str | None, allocator: str | None) -> dict[str, Any]:
    method = {name: None for name in FIELDS} | {"pruner": pruner, "scorer": scorer, "allocator": allocator}
    # a frozen copy of ecoflap.core.provenance.method_key as it was at this revision: migrations never
    # import code that may change after them
    text = json.dumps(method, sort_keys=True, separators=(",", ":"), default=str)
    return {"run_id": run_id, "m": method, "k": hashlib.sha256(text.encode()).hexdigest()}
