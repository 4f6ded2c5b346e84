"""``check_writable(url)``: the results database accepts writes (checked before any compute), leaving nothing behind."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from results_documents import document
from sqlalchemy import inspect, text
from test_dashboard_readonly import read_only_media, unprivileged  # noqa: F401  (fixture)
from test_results_store import PG_SERVER, postgres_databases  # noqa: F401  (fixture)

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.store import (
    NotADatabase,
    ResultsStore,
    StoreUnavailable,
    check_writable,
    create_store_engine,
    resolve_url,
)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def rows(url: str) -> tuple[int, list[str], list[str]]:
    """Runs, alembic_version rows and tables: what a check must leave as it found them."""
    engine = create_store_engine(resolve_url(url))
    with engine.connect() as connection:
        runs = connection.scalar(text("SELECT count(*) FROM runs"))
        versions = list(connection.scalars(text("SELECT version_num FROM alembic_version")))
        tables = sorted(inspect(connection).get_table_names())
    engine.dispose()
    return runs, versions, tables


def test_a_new_sqlite_file_is_checked_without_being_created(tmp_path):
    check_writable(f"sqlite:///{tmp_path / 'results.db'}")
    check_writable(f"sqlite:///{tmp_path / 'runs' / 'results.db'}")  # one missing folder: the store makes it
    assert listing(tmp_path) == []


def test_an_existing_database_is_written_and_rolled_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = ResultsStore(url)
    store.record(document("k-1"))
    store.close()
    before = rows(url)
    data = (tmp_path / "results.db").read_bytes()
    check_writable(url)
    assert rows(url) == before and before[1] == ["0002"] and "ecoflap_write_check" not in before[2]
    assert (tmp_path / "results.db").read_bytes() == data


def test_an_empty_sqlite_database_gets_no_table(tmp_path):
    sqlite3.connect(tmp_path / "empty.db").close()
    check_writable(f"sqlite:///{tmp_path / 'empty.db'}")
    connection = sqlite3.connect(tmp_path / "empty.db")
    assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    connection.close()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp: f"sqlite:///{tmp}/no/such/results.db", NotADatabase, "does not exist"),
        (lambda tmp: (tmp / "notes.db").write_text("notes\n") and f"sqlite:///{tmp / 'notes.db'}", NotADatabase,
         "file is not a database"),
        (lambda tmp: f"sqlite:///{tmp}", NotADatabase, "unable to open database file"),
        (lambda tmp: (tmp / "notes.txt").write_text("x") and f"sqlite:///{tmp}/notes.txt/r.db", NotADatabase,
         "notes.txt is a file, not a folder"),
        (lambda tmp: (tmp / "notes.txt").write_text("x") and f"sqlite:///{tmp}/notes.txt/new/r.db", NotADatabase,
         "notes.txt is a file, not a folder"),
        (lambda tmp: "sqlite-nonsense", EcoflapError, "invalid database URL"),
        (lambda tmp: "mysql://u:pw@localhost/x", EcoflapError, "install its driver"),
    ],
)  # fmt: skip
def test_unusable_sqlite_urls(tmp_path, make, error, message):
    url = make(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(error, match=message):
        check_writable(url)
    assert listing(tmp_path) == before


def test_a_database_of_a_newer_ecoflap_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ResultsStore(url).close()
    connection = sqlite3.connect(tmp_path / "results.db")
    connection.execute("UPDATE alembic_version SET version_num = '0099'")
    connection.commit()
    connection.close()
    with pytest.raises(EcoflapError, match="schema revision 0099, newer than this ecoflap knows"):
        check_writable(url)


CHECK = """
import sys
from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.store import check_writable
try:
    check_writable(sys.argv[1])
except EcoflapError as exc:
    print("Error:", exc)
else:
    print("writable")
"""


@pytest.mark.parametrize("existing", [True, False])
def test_read_only_media_is_refused(read_only_media, existing):  # noqa: F811
    url = f"sqlite:///{read_only_media / 'results.db'}"
    if existing:
        ResultsStore(url).close()
        (read_only_media / "results.db").chmod(0o444)
    read_only_media.chmod(0o555)
    before = listing(read_only_media)
    done = subprocess.run(unprivileged([sys.executable, "-c", CHECK, url]), capture_output=True, text=True, timeout=120)
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("Error: ") and ("readonly" in line or "Permission denied" in line), (line, done.stderr)
    assert listing(read_only_media) == before


def test_postgresql_fresh_read_only_and_unreachable(postgres_databases):  # noqa: F811
    fresh = postgres_databases()
    check_writable(fresh)
    engine = create_store_engine(resolve_url(fresh))
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == []  # the probe table was rolled back
    engine.dispose()
    store = ResultsStore(fresh)
    store.record(document("k-pg"))
    store.close()
    before = rows(fresh)
    check_writable(fresh)
    assert rows(fresh) == before
    name = fresh.rsplit("/", 1)[1]
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with pytest.raises(StoreUnavailable, match="does not accept writes: cannot execute INSERT in a read-only"):
        check_writable(fresh)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreUnavailable, match=f"postgres:\\*\\*\\*@127.0.0.1:{port}/x: .*server runs"):
        check_writable(f"postgresql://postgres:secret@127.0.0.1:{port}/x")


def test_check_writable_is_importable_by_the_flows():
    from ecoflap.evaluation.results import store

    assert store.check_writable is check_writable and "check_writable" in store.__all__
    assert json.dumps(check_writable.__doc__)  # documented
