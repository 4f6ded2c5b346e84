"""Where the results database is and how to connect to it: the URL, its masked form, the engine's settings.

Shared by the store and the Alembic environment (neither imports the other for it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ecoflap.core.errors import EcoflapError

ENV_URL = "ECOFLAP_DATABASE_URL"
ENV_DATA_DIR = "ECOFLAP_DATA_DIR"
BUSY_TIMEOUT_S = 60


URL_HINT = "give --database-url sqlite:///PATH/results.db or postgresql://USER@HOST:PORT/DATABASE"
PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@/]*@")


class StoreUnavailable(EcoflapError):
    """The results database cannot be reached or opened."""


class NotADatabase(StoreUnavailable):
    """The URL names something that is not a results database (a file of another kind, a folder, a missing folder)."""


def default_folder() -> Path:
    """``$ECOFLAP_DATA_DIR``, else platformdirs' user data folder for ecoflap."""
    folder = os.environ.get(ENV_DATA_DIR)
    if not folder:
        import platformdirs

        folder = platformdirs.user_data_dir("ecoflap", appauthor=False)
    return Path(folder).expanduser()


def default_url() -> str:
    """``$ECOFLAP_DATABASE_URL``, else the SQLite file in the user data folder."""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    return f"sqlite:///{default_folder() / 'results.db'}"


def resolve_url(url: str | URL | None) -> URL:
    """The URL to open; ``postgresql://`` means psycopg 3 (``postgres://`` is accepted too)."""
    raw = url if url is not None else default_url()
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        reason = "not a URL" if isinstance(exc, ArgumentError) else "its port is not a number"
        raise EcoflapError(f"invalid database URL {mask_text(str(raw))!r} ({reason}): {URL_HINT}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def mask_text(raw: str) -> str:
    """A URL that did not parse, with anything between ``user:`` and ``@`` shown as ``***``."""
    return PASSWORD_IN_URL.sub(r"\1***@", raw)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def create_store_engine(url: URL) -> Engine:
    """An engine with the settings concurrent writers need (SQLite: WAL, busy timeout, real BEGIN)."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise EcoflapError(f"cannot use database URL {masked(url)}: {exc}: install its driver, or {URL_HINT}") from None


def _sqlite_engine(url: URL) -> Engine:
    path = sqlite_path(url)
    in_memory = path is None
    if path is not None:
        _database_folder(url, path)
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


def _database_folder(url: URL, path: Path) -> None:
    """Make the database file's folder (see ``existing_folder``)."""
    folder = path.parent
    if folder.is_dir():
        return
    existing_folder(url, path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the folder of {masked(url)}: {exc.strerror} ({URL_HINT})") from None


def existing_folder(url: URL, path: Path) -> Path | None:
    """The existing folder a new SQLite file at ``path`` is made in; None: the default location (made with parents).

    Its own folder, else the one above: one missing level is made, a chain of them is a mistyped path (NotADatabase).
    """
    folder = path.parent
    if folder.is_dir():
        return folder
    # sqlite:///notes.txt/r.db: the "folder" is a file (asked again: another writer may have just made the folder)
    if (folder.exists() and not folder.is_dir()) or folder.parent.is_file():
        file = folder if folder.exists() else folder.parent
        raise NotADatabase(
            f"cannot use the results database {masked(url)}: {file} is a file, not a folder ({URL_HINT})"
        )
    if folder == default_folder():
        return None
    if not folder.parent.is_dir():
        raise NotADatabase(
            f"cannot use the results database {masked(url)}: the folder {folder.parent} does not exist "
            f"(create it, or {URL_HINT})"
        )
    return folder.parent
