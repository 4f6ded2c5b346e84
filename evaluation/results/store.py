"""``ResultsStore``: record results documents in SQLite or PostgreSQL and query them.

The URL comes from the argument, else ``$ECOFLAP_DATABASE_URL``, else a SQLite file in the user data
folder (``$ECOFLAP_DATA_DIR`` or platformdirs' ``user_data_dir("ecoflap")``, file ``results.db``).
Opening a store upgrades its schema to the newest Alembic revision, under a lock (SQLite: an
immediate transaction; PostgreSQL: an advisory lock), so several processes may open it at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, insert, inspect, select, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.database import (
    ENV_DATA_DIR,
    ENV_URL,
    URL_HINT,
    NotADatabase,
    StoreUnavailable,
    create_store_engine,
    default_url,
    existing_folder,
    masked,
    resolve_url,
    sqlite_path,
)
from ecoflap.evaluation.results.document import ParsedRun, parse_document
from ecoflap.evaluation.results.method import COLUMNS, run_label
from ecoflap.evaluation.results.migrations import current_revision, head_revision, known_revision, upgrade
from ecoflap.evaluation.results.models import Artefact, LayerAllocation, Run, RunTag, TaskMetric

ATTEMPTS = 8
MIGRATION_LOCK = 0x65636F666C6170  # "ecoflap": the PostgreSQL advisory lock held while migrating
TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
T = TypeVar("T")
MAX_IDS = {"postgresql": 2**31 - 1, "sqlite": 2**63 - 1}  # the largest run id each backend's id column holds
MAX_TAG = 128  # characters (the run_tags.tag column)
WRITE_PROBE = "ecoflap-write-check"  # the row check_writable inserts into alembic_version and rolls back
__all__ = [  # the connection helpers live in database.py; importers of this module find them here too
    "ENV_DATA_DIR", "ENV_URL", "NotADatabase", "ResultsStore", "StoreUnavailable", "check_writable",
    "create_store_engine", "default_url", "masked", "resolve_url",
]  # fmt: skip


class _KeyRace(Exception):
    """Another process inserted the same run key first: retry as an update."""


class ResultsStore:
    """Runs, their metrics and allocations in one SQL database (see the module docstring for the URL)."""

    def __init__(self, url: str | URL | None = None) -> None:
        self.url = resolve_url(url)
        self.engine = create_store_engine(self.url)
        self._writer = self.engine.execution_options(ecoflap_write=True)
        with self._guard():
            self._upgrade()

    def __repr__(self) -> str:
        return f"ResultsStore({masked(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ---- schema -------------------------------------------------------------------------------

    def _upgrade(self) -> None:
        with self.engine.connect() as connection:
            if current_revision(connection) == head_revision():
                return
        with self._writer.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            upgrade(connection)

    # ---- sessions and errors ------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Connection failures -> StoreUnavailable: one line, password masked."""
        with unavailable_as_error(self.url):
            yield

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        with self._guard(), Session(self._writer if write else self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def _retrying(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, again after a key race, deadlock or serialization failure."""
        for attempt in range(ATTEMPTS):
            try:
                with self._session(write=True) as session:
                    return work(session)
            except _KeyRace:
                continue
            except OperationalError as exc:
                if _sqlstate(exc) not in TRANSIENT_SQLSTATES or attempt == ATTEMPTS - 1:
                    raise
        raise EcoflapError(f"gave up after {ATTEMPTS} attempts: the same run key kept being inserted concurrently")

    # ---- writing ------------------------------------------------------------------------------

    def record(self, document: dict[str, Any], artefacts: dict[str, str] | None = None) -> int:
        """Record a whole run in one transaction; the same ``ecoflap.run_key`` updates that run. Returns its id."""
        parsed = parse_document(document, artefacts)
        try:
            return self._retrying(lambda session: _write_run(session, parsed))
        except IntegrityError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise EcoflapError(f"cannot record run {parsed.run_key}: {reason}") from None

    def tag(self, ref: str | int, tag: str) -> int:
        """Point ``tag`` at a run (moving it from any other run). Returns the run id."""
        check_tag(tag)
        run_id = self._require(ref)

        def work(session: Session) -> int:
            session.execute(delete(RunTag).where(RunTag.tag == tag))
            session.add(RunTag(tag=tag, run_id=run_id))
            try:
                session.flush()
            except IntegrityError:
                raise _KeyRace from None
            return run_id

        return self._retrying(work)

    # ---- reading ------------------------------------------------------------------------------

    def resolve(self, ref: str | int) -> int | None:
        """A run id from an id, a tag, a run key or a unique run-key prefix (6+ characters)."""
        with self._session() as session:
            return _resolve(session, str(ref).strip())

    def _require(self, ref: str | int) -> int:
        run_id = self.resolve(ref)
        if run_id is None:
            raise EcoflapError(f"no run {ref!r} in {masked(self.url)} (give a run id, tag or run key)")
        return run_id

    def get_run(self, ref: str | int) -> dict[str, Any] | None:
        """The run with its allocation, metrics, artefacts and tags, or None."""
        with self._session() as session:
            run_id = _resolve(session, str(ref).strip())
            if run_id is None:
                return None
            return run_dict(session.scalars(_full_runs().where(Run.id == run_id)).one())

    def require_run(self, ref: str | int) -> dict[str, Any]:
        """``get_run``, but an unknown reference is an EcoflapError."""
        run = self.get_run(ref)
        if run is None:
            self._require(ref)
        return run  # type: ignore[return-value]

    def latest_run(self) -> dict[str, Any] | None:
        """The most recently recorded (or re-recorded) run."""
        with self._session() as session:
            run_id = session.scalar(select(Run.id).order_by(Run.updated_at.desc(), Run.id.desc()).limit(1))
        return None if run_id is None else self.get_run(run_id)

    def runs(self) -> list[dict[str, Any]]:
        """Every run with everything recorded about it, oldest first."""
        with self._session() as session:
            return [run_dict(run) for run in session.scalars(_full_runs().order_by(Run.id))]

    def leaderboard(
        self,
        model: str | None = None,
        task: str | None = None,
        sparsity: float | None = None,
        metric: str | None = None,
    ) -> list[dict[str, Any]]:
        """Best complete run per method and model/task/metric/sparsity, with its delta to the dense baseline."""
        from ecoflap.evaluation.results.leaderboard import leaderboard_rows

        query = select(Run, TaskMetric).join(TaskMetric).where(Run.status == "complete")
        if model is not None:
            query = query.where(Run.model == model)
        if task is not None:
            query = query.where(TaskMetric.task == task)
        if metric is not None:
            query = query.where(TaskMetric.metric == metric)
        with self._session() as session:
            entries = [_entry(run, row) for run, row in session.execute(query)]
        return leaderboard_rows(entries, sparsity)


def _write_run(session: Session, parsed: ParsedRun) -> int:
    """Insert or update the run row, then replace its child rows (all inside the caller's transaction)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    run = session.scalars(select(Run).where(Run.run_key == parsed.run_key).with_for_update()).one_or_none()
    if run is None:
        run = Run(run_key=parsed.run_key, created_at=now, updated_at=now, **parsed.columns)
        try:
            with session.begin_nested():
                session.add(run)
        except IntegrityError as exc:
            if session.scalar(select(Run.id).where(Run.run_key == parsed.run_key)) is None:
                raise
            raise _KeyRace from exc
    else:
        _same_method(run, parsed)
        for name, value in {**parsed.columns, "updated_at": now}.items():
            setattr(run, name, value)
        for table in (LayerAllocation, TaskMetric, Artefact):
            session.execute(delete(table).where(table.run_id == run.id))
    children = {LayerAllocation: parsed.allocation, TaskMetric: parsed.metrics, Artefact: parsed.artefacts}
    for table, rows in children.items():
        if rows:
            session.execute(insert(table), [{**row, "run_id": run.id} for row in rows])
    return run.id


def _same_method(run: Run, parsed: ParsedRun) -> None:
    """A run key names one method: a document with another method under the same key is refused, not merged."""
    if run.dense != parsed.columns["dense"] or run.method_key != parsed.columns["method_key"]:
        found, given = run.method_key or "dense", parsed.columns["method_key"] or "dense"
        raise EcoflapError(
            f"run key {parsed.run_key} is recorded for method {found[:12]}, this document has method {given[:12]}: "
            "a run key must include the method (write the document with a new run key)"
        )


def _resolve(session: Session, ref: str) -> int | None:
    if ref.isascii() and ref.isdigit():
        run_id = int(ref)
        if run_id > MAX_IDS.get(session.get_bind().dialect.name, 2**31 - 1):
            return None  # more than any id the database can hold
        return session.scalar(select(Run.id).where(Run.id == run_id))
    found = session.scalar(select(RunTag.run_id).where(RunTag.tag == ref))
    found = found or session.scalar(select(Run.id).where(Run.run_key == ref))
    if found is not None or len(ref) < 6:
        return found
    matches = session.scalars(select(Run.id).where(Run.run_key.startswith(ref, autoescape=True)).limit(2)).all()
    if len(matches) > 1:
        raise EcoflapError(f"run key prefix {ref!r} matches several runs: give more characters")
    return matches[0] if matches else None


def check_tag(tag: str) -> None:
    """A tag is 1 to MAX_TAG printable characters and not a number (a number is a run id)."""
    if not tag or tag.isdigit() or len(tag) > MAX_TAG or not tag.isprintable():
        raise EcoflapError(
            f"invalid tag {tag!r}: give a name of 1 to {MAX_TAG} printable characters that is not a number"
        )


@contextmanager
def unavailable_as_error(url: URL) -> Iterator[None]:
    """Connection failures -> StoreUnavailable (a file that is no database: NotADatabase), one line, password masked."""
    try:
        yield
    except OperationalError as exc:
        if _sqlstate(exc) in TRANSIENT_SQLSTATES:
            raise
        reason = _reason(exc)
        error = NotADatabase if "unable to open database file" in reason else StoreUnavailable
        raise error(f"cannot use the results database {masked(url)}: {reason} ({_hint(url, reason)})") from None
    except DatabaseError as exc:
        if type(exc) is not DatabaseError:  # IntegrityError, DataError...: the caller's to handle
            raise
        reason = _reason(exc)
        raise NotADatabase(f"cannot use the results database {masked(url)}: {reason} ({URL_HINT})") from None


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _hint(url: URL, reason: str) -> str:
    if url.get_backend_name() == "postgresql":
        return f"check that the server runs and accepts this user, or {URL_HINT}"
    if "readonly" in reason or "read-only" in reason:
        return "the file or its folder cannot be written: give a writable database"
    return URL_HINT


def check_writable(url: str | URL | None) -> None:
    """Raise EcoflapError unless the results database can be opened and written; leaves nothing behind.

    A SQLite file that does not exist yet: the folder it would be made in must take a file (nothing is created).
    An existing database: one write transaction that is rolled back (a probe row in ``alembic_version``, or,
    with no schema yet, a table), and a schema revision this ecoflap knows.
    """
    resolved = resolve_url(url)
    path = sqlite_path(resolved)
    if path is not None and not path.exists():
        _check_new_sqlite_file(resolved, path)
        return
    engine = create_store_engine(resolved)
    try:
        with unavailable_as_error(resolved), engine.execution_options(ecoflap_write=True).connect() as connection:
            with connection.begin() as transaction:
                _probe_write(connection, resolved)
                transaction.rollback()
    except DBAPIError as exc:  # read-only transaction, no privilege, ...
        reason = _reason(exc)
        raise StoreUnavailable(
            f"the results database {masked(resolved)} does not accept writes: {reason} ({_hint(resolved, reason)})"
        ) from None
    finally:
        engine.dispose()


def _check_new_sqlite_file(url: URL, path: Path) -> None:
    """The folder the store would make the file in takes a file (a temporary one, gone at once)."""
    folder = existing_folder(url, path)
    if folder is None:
        return  # the default location: made, with its parents, on first use
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot use the results database {masked(url)}: cannot create a file in {folder}: {exc.strerror} "
            f"(give a writable location: {URL_HINT})"
        ) from None


def _probe_write(connection: Connection, url: URL) -> None:
    """A write the database must accept (inside the caller's transaction, which is rolled back)."""
    if not inspect(connection).has_table("alembic_version"):
        connection.execute(text("CREATE TABLE ecoflap_write_check (id INTEGER)"))
        return
    found = current_revision(connection)
    if found is not None and not known_revision(found):
        raise EcoflapError(
            f"the results database {masked(url)} has schema revision {found}, newer than this ecoflap knows: "
            "upgrade ecoflap"
        )
    connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:probe)"), {"probe": WRITE_PROBE})


def _full_runs() -> Any:
    return select(Run).options(
        selectinload(Run.allocation), selectinload(Run.metrics), selectinload(Run.artefacts), selectinload(Run.tags)
    )


RUN_FIELDS = [column.key for column in Run.__table__.columns]
METRIC_FIELDS = ["task", "metric", "filter", "value", "stderr", "n_samples", "higher_is_better", "task_version"]


def run_dict(run: Run) -> dict[str, Any]:
    """A run as plain JSON-ready values (times as ISO strings)."""
    values = {name: _plain(getattr(run, name)) for name in RUN_FIELDS}
    values["method_label"] = run_label(values)
    values["tags"] = [tag.tag for tag in run.tags]
    values["allocation"] = [
        {key: getattr(row, key) for key in ("layer", "tower", "block", "target", "measured", "params")}
        for row in run.allocation
    ]
    values["metrics"] = [{key: getattr(row, key) for key in METRIC_FIELDS} for row in run.metrics]
    values["artefacts"] = [{"kind": row.kind, "path": row.path} for row in run.artefacts]
    return values


def _entry(run: Run, row: TaskMetric) -> dict[str, Any]:
    names = ("id", "run_key", "model", "dense", "pruner", "scorer", "allocator", "method", "method_key", *COLUMNS)
    values = {name: getattr(run, name) for name in names}
    values |= {"target_sparsity": run.target_sparsity, "updated_at": run.updated_at}
    return values | {key: getattr(row, key) for key in METRIC_FIELDS}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
