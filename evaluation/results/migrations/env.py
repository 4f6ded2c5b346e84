"""Alembic environment: migrates the connection ResultsStore passes, else the URL of alembic.ini / the default."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ecoflap.evaluation.results.database import create_store_engine, resolve_url
from ecoflap.evaluation.results.models import Base

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = create_store_engine(resolve_url(config.get_main_option("sqlalchemy.url") or None))
    with engine.connect() as connection:
        run(connection)
        connection.commit()
    engine.dispose()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
