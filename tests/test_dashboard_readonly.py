"""The dashboard never changes the database it shows: SQLite mode=ro, no journal switch, read-only media, odd ids."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from results_documents import document
from starlette.testclient import TestClient

from ecoflap.evaluation.dashboard.app import create_app
from ecoflap.evaluation.results.migrations import upgrade
from ecoflap.evaluation.results.store import ResultsStore, create_store_engine, resolve_url

PAGES = [
    "/", "/leaderboard.json", "/leaderboard.csv", "/curves", "/curves.json", "/runs", "/runs.csv", "/runs/1",
    "/runs/k-pruned.json", "/runs/candidate/allocation.csv", "/compare?a=k-dense&b=candidate", "/compare.csv?a=1&b=2",
]  # fmt: skip
ODD_REFS = [
    "99999999999999999999999",
    "9223372036854775808",
    "2147483648",
    "-1",
    "-99999999999999999999999",
    "0",
    "%C2%B2",
    "%EF%BC%91",
    "%D9%A3",
    "1e5",
    "0x1",
    "%F0%9F%98%80",
    "%00",
    "%25",
    "nul%00l",
    "1.5",
    "1%201",
]  # fmt: skip  (superscript two, full-width one, Arabic-Indic three: digits to str.isdigit, not ids)
NOBODY = 65534


def seed(path: Path) -> str:
    """A dense and a tagged pruned run in a SQLite file, as `ecoflap results record` leaves it (WAL mode)."""
    url = f"sqlite:///{path}"
    store = ResultsStore(url)
    store.record(document("k-dense", dense=True))
    store.record(document("k-pruned"))
    store.tag("k-pruned", "candidate")
    store.close()
    return url


def journal_mode(path: Path) -> str:
    """The journal mode, read over a plain connection (a read-only one would leave a WAL database's -shm behind)."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()


def to_rollback_journal(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = DELETE")
    connection.close()


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def test_page_views_change_nothing_in_a_rollback_journal_database(tmp_path):
    path = tmp_path / "results.db"
    url = seed(path)
    to_rollback_journal(path)
    before = snapshot(path)
    with TestClient(create_app(url)) as client:
        for page in PAGES:
            assert client.get(page).status_code == 200, page
        for ref in ODD_REFS[:4]:
            client.get(f"/runs/{ref}")
    assert snapshot(path) == before  # bytes, mtime and the folder's listing (no -wal, -shm or -journal)
    assert journal_mode(path) == "delete"


def test_page_views_leave_a_wal_database_file_untouched(tmp_path):
    path = tmp_path / "results.db"
    url = seed(path)
    assert journal_mode(path) == "wal"
    data, mtime, _ = snapshot(path)
    with TestClient(create_app(url)) as client:
        assert all(client.get(page).status_code == 200 for page in PAGES)
    assert snapshot(path)[:2] == (data, mtime) and journal_mode(path) == "wal"


# ---- read-only media ----------------------------------------------------------------------------

SERVE = """
import json, sys
from starlette.testclient import TestClient
from ecoflap.evaluation.dashboard.app import create_app

with TestClient(create_app(sys.argv[1]), raise_server_exceptions=False) as client:
    pages = {page: client.get(page) for page in json.loads(sys.argv[2])}
    runs = client.get("/runs.json").json()
print(json.dumps({"status": {p: r.status_code for p, r in pages.items()}, "runs": [r["run_key"] for r in runs],
                  "errors": [r.text[:300] for r in pages.values() if r.status_code != 200]}))
"""


@pytest.fixture
def read_only_media() -> Iterator[Path]:
    """A folder and files nobody can write (as root, the pages are served by an unprivileged user)."""
    root = Path(tempfile.mkdtemp(prefix="ecoflap-ro-"))
    root.chmod(0o755)
    media = root / "media"
    media.mkdir()
    yield media
    for path in [media, *media.iterdir()]:
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(root)


def unprivileged(command: list[str]) -> list[str]:
    """``command`` run as a user that cannot write the media: itself, or nobody when we are root."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")  # it execs where subprocess's user= may not (a venv python under /root)
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv: cannot drop to an unprivileged user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def serve_as_reader(url: str, pages: list[str]) -> dict:
    """The pages, requested in a process that cannot write the media."""
    env = {**os.environ, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}
    command = unprivileged([sys.executable, "-c", SERVE, url, json.dumps(pages)])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_database_on_read_only_media_is_served(read_only_media, mode):
    path = read_only_media / "results.db"
    url = seed(path)
    if mode == "delete":
        to_rollback_journal(path)
    assert journal_mode(path) == mode and sorted(os.listdir(read_only_media)) == ["results.db"]
    path.chmod(0o444)
    read_only_media.chmod(0o555)
    before = snapshot(path)
    served = serve_as_reader(url, PAGES)
    assert served["status"] == dict.fromkeys(PAGES, 200), served["errors"]
    assert served["runs"] == ["k-pruned", "k-dense"]
    assert snapshot(path) == before


# ---- odd ids --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    url = seed(tmp_path_factory.mktemp("odd") / "results.db")
    with TestClient(create_app(url), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("ref", ODD_REFS)
def test_odd_run_ids_are_a_404_never_a_500(client: TestClient, ref: str):
    for path in (f"/runs/{ref}", f"/runs/{ref}.json", f"/runs/{ref}.csv", f"/runs/{ref}/allocation.json",
                 f"/compare?a={ref}&b=1", f"/compare.json?a=1&b={ref}"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
        assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "query",
    ["sparsity=1e400", "sparsity=nan", "sparsity=%00", "sort=%00", "order=%F0%9F%98%80", "model=%00&metric=acc",
     "sparsity=99999999999999999999999999999999999999999999"],
)  # fmt: skip
def test_odd_query_values_are_a_400_or_an_empty_page_never_a_500(client: TestClient, query: str):
    for page in ("/", "/leaderboard.json", "/leaderboard.csv", "/curves"):
        response = client.get(f"{page}?{query}")
        assert response.status_code in (200, 400), (page, query, response.status_code)


# ---- an older schema --------------------------------------------------------------------------------


def test_an_older_schema_is_a_503_that_says_so_and_is_not_upgraded(tmp_path):
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    engine = create_store_engine(resolve_url(url))
    with engine.connect() as connection, connection.begin():
        upgrade(connection, "0001")
    engine.dispose()
    to_rollback_journal(path)
    before = snapshot(path)
    with TestClient(create_app(url), raise_server_exceptions=False) as old:
        page = old.get("/")
        assert page.status_code == 503 and "schema revision 0001" in page.text and "ecoflap results list" in page.text
        assert old.get("/runs.json").json()["status"] == 503
    assert snapshot(path) == before and journal_mode(path) == "delete"
    ResultsStore(url).close()  # a results command upgrades it; then the dashboard serves it
    with TestClient(create_app(url)) as upgraded:
        assert upgraded.get("/").status_code == 200
