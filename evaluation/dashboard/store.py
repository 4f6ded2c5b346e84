"""The results store opened read-only for the dashboard: no schema upgrade, no file created, writes refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

from ecoflap.evaluation.results.store import ResultsStore, StoreUnavailable, create_store_engine, masked, resolve_url


class ReadOnlyStore(ResultsStore):
    """``ResultsStore``'s queries over a connection that refuses writes (SQLite ``query_only``, PostgreSQL read-only).

    A missing SQLite file or a database without the current schema is ``StoreUnavailable``: the dashboard
    never creates or upgrades a database (``ecoflap results`` and ``ecoflap run`` do).
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
                "upgrade it with any `ecoflap results` command (or upgrade ecoflap)"
            )

    def _upgrade(self) -> None:  # pragma: no cover - never called: the dashboard does not migrate
        raise StoreUnavailable("the dashboard opens the results database read-only and never upgrades it")


def _require_sqlite_file(url: URL) -> None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database).expanduser()
    if not path.is_file():
        raise StoreUnavailable(
            f"no results database at {path} (record runs with `ecoflap run` or `ecoflap results record`, "
            "or give --database-url URL)"
        )


def read_only_engine(url: URL) -> Engine:
    """The store's engine with every connection made read-only as it opens."""
    engine = create_store_engine(url)
    backend = url.get_backend_name()

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        if backend == "sqlite":
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()
        elif hasattr(dbapi_connection, "read_only"):  # psycopg 3
            dbapi_connection.read_only = True

    return engine
