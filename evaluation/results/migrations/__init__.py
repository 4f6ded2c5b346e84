"""Alembic migrations of the results database, shipped with the package and run by ``ResultsStore``.

New revision after changing models.py: ``alembic -c evaluation/results/alembic.ini revision --autogenerate -m "..."``
(the URL: ``$ECOFLAP_DATABASE_URL`` or the default SQLite file).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

from ecoflap.core.errors import EcoflapError

FOLDER = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for this package; ``connection``: migrate through it (inside its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(FOLDER).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this package's migrations."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` (the caller holds the transaction and any lock)."""
    try:
        command.upgrade(alembic_config(connection), revision)
    except CommandError as exc:
        hint = "is this ecoflap older than the database?"
        raise EcoflapError(f"cannot upgrade the results database: {exc} ({hint})") from None
