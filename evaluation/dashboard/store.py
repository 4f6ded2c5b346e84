"""The results store opened read-only for the dashboard: no schema upgrade, no file created or changed, writes refused.

SQLite is opened with ``mode=ro`` (a URI filename), never switched to WAL: a database in rollback-journal mode
stays so, and nothing is created beside it. A database SQLite cannot open that way because its media cannot be
written (a WAL database needs its ``-shm`` file) is opened ``immutable=1``. PostgreSQL connections are
read-only sessions.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from ecoflap.evaluation.results.database import BUSY_TIMEOUT_S, URL_HINT, NotADatabase, existing_folder, sqlite_path
from ecoflap.evaluation.results.store import (
    ResultsStore,
    StoreUnavailable,
    create_store_engine,
    masked,
    resolve_url,
)


class ReadOnlyStore(ResultsStore):
    """``ResultsStore``'s queries over connections that cannot write (SQLite ``mode=ro``, PostgreSQL read-only).

    A missing SQLite file or a database without the current schema is ``StoreUnavailable`` (a 503 page that
    says why): the dashboard never creates or upgrades a database (``ecoflap results`` and ``ecoflap run`` do).
    """

    def __init__(self, url: str | URL | None = None) -> None:
        self.url = resolve_url(url)
        _require_sqlite_file(self.url)
        self.engine = read_only_engine(self.url)
        self._writer = self.engine
        with self._guard():
            self._check_schema()

    def _check_schema(self) -> None:
        from ecoflap.evaluation.results.migrations import current_revision, head_revision

        with self.engine.connect() as connection:
            found, wanted = current_revision(connection), head_revision()
        if found is None:
            raise StoreUnavailable(f"the database {masked(self.url)} holds no ecoflap results (no schema yet)")
        if found != wanted:
            raise StoreUnavailable(
                f"the results database {masked(self.url)} has schema revision {found}, this ecoflap reads {wanted}: "
                "the dashboard never changes a database; upgrade it with any `ecoflap results` command "
                "(e.g. `ecoflap results list`), or run a matching ecoflap"
            )

    def _upgrade(self) -> None:  # pragma: no cover - never called: the dashboard does not migrate
        raise StoreUnavailable("the dashboard opens the results database read-only and never upgrades it")


def _require_sqlite_file(url: URL) -> None:
    path = sqlite_path(url)
    if path is None or path.is_file():
        return
    if path.exists():
        raise NotADatabase(f"cannot use the results database {masked(url)}: {path} is not a file ({URL_HINT})")
    existing_folder(url, path)  # a chain of missing folders is a mistyped path, not a database to come
    raise StoreUnavailable(
        f"no results database at {path} (record runs with `ecoflap run` or `ecoflap results record`, "
        "or give --database-url URL)"
    )


def read_only_engine(url: URL) -> Engine:
    """An engine whose every connection is read-only as it opens."""
    path = sqlite_path(url)
    if path is not None:
        return create_engine(url, creator=lambda: connect_read_only(path.resolve()))
    engine = create_store_engine(url)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "read_only"):  # psycopg 3
            dbapi_connection.read_only = True

    return engine


def connect_read_only(path: Path) -> sqlite3.Connection:
    """``file:PATH?mode=ro``; on media that cannot be written and where that fails, ``immutable=1``."""
    uri = f"file:{quote(str(path))}?mode=ro"
    connection = _connect(uri)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file (and a WAL index)
    except sqlite3.OperationalError:
        connection.close()
        if _writable(path):
            raise
        connection = _connect(uri + "&immutable=1")
    connection.execute("PRAGMA query_only = ON")
    return connection


def _connect(uri: str) -> sqlite3.Connection:
    # the pool hands connections to Starlette's worker threads: each is used by one thread at a time
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
