"""Where the results database is and how to connect to it: the URL, its masked form, the engine's settings.

Shared by the store and the Alembic environment (neither imports the other for it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ecoflap.core.errors import EcoflapError

ENV_URL = "ECOFLAP_DATABASE_URL"
ENV_DATA_DIR = "ECOFLAP_DATA_DIR"
BUSY_TIMEOUT_S = 60


class StoreUnavailable(EcoflapError):
    """The results database cannot be reached or opened."""


def default_url() -> str:
    """``$ECOFLAP_DATABASE_URL``, else the SQLite file in the user data folder."""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    folder = os.environ.get(ENV_DATA_DIR)
    if not folder:
        import platformdirs

        folder = platformdirs.user_data_dir("ecoflap", appauthor=False)
    return f"sqlite:///{Path(folder).expanduser() / 'results.db'}"


def resolve_url(url: str | URL | None) -> URL:
    """The URL to open; ``postgresql://`` means psycopg 3 (``postgres://`` is accepted too)."""
    raw = url if url is not None else default_url()
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise EcoflapError(f"invalid database URL {str(raw)!r} (e.g. sqlite:///results.db, postgresql://...)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL) -> Engine:
    """An engine with the settings concurrent writers need (SQLite: WAL, busy timeout, real BEGIN)."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise EcoflapError(f"cannot use database URL {masked(url)}: {exc} (is its driver installed?)") from None


def _sqlite_engine(url: URL) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if not in_memory:
        try:
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the folder of {masked(url)}: {exc.strerror}") from None
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below, not the driver's
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writing = connection.get_execution_options().get("ecoflap_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine
