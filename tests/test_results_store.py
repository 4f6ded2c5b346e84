"""ResultsStore on SQLite and on the local PostgreSQL server: records, upserts, atomicity, concurrency, queries."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from results_documents import document, method
from sqlalchemy import Column, Integer, MetaData, Table, event, func, inspect, select
from sqlalchemy.engine import make_url

import ecoflap.evaluation.results.store as store_module
from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.database import existing_folder
from ecoflap.evaluation.results.document import parse_document
from ecoflap.evaluation.results.method import legacy_method, method_label
from ecoflap.evaluation.results.migrations import upgrade
from ecoflap.evaluation.results.models import Base, LayerAllocation, Run, TaskMetric
from ecoflap.evaluation.results.store import (
    ResultsStore,
    StoreUnavailable,
    create_store_engine,
    default_url,
    resolve_url,
)

ROOT = Path(__file__).resolve().parents[1]
# libpq connection string of the server's maintenance database (override: $ECOFLAP_TEST_POSTGRES)
PG_SERVER = os.environ.get("ECOFLAP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@pytest.fixture(scope="session")
def postgres_databases():
    """Makes fresh databases on the local PostgreSQL server; drops them all at the end. No server: FAIL."""
    import psycopg

    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        pytest.fail(f"the PostgreSQL tests need the server of {PG_SERVER!r}: {reason}", pytrace=False)
    prefix, names = f"ecoflap_test_{secrets.token_hex(4)}", []

    def make() -> str:
        names.append(f"{prefix}_{len(names)}")
        admin.execute(f'CREATE DATABASE "{names[-1]}"')
        info = admin.info
        return f"postgresql://{info.user}@{info.host}:{info.port}/{names[-1]}"

    yield make
    for name in names:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'results.db'}"
    return request.getfixturevalue("postgres_databases")()


def count(store: ResultsStore, table) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table))


def test_record_and_read_back(db_url):
    store = ResultsStore(db_url)
    doc = document("k-read", {"vqa": {"acc": (0.91, 0.004), "invalid_rate": 0.01}, "caption": {"cider": 1.2}})
    run_id = store.record(doc, artefacts={"results": "/runs/k-read/results.json"})
    run = store.get_run(run_id)
    assert run == store.get_run("k-read") == store.get_run(str(run_id))
    assert (run["model"], run["pruner"], run["scorer"], run["allocator"]) == (
        "mini",
        "wanda",
        "zeroth-order",
        "ecoflap",
    )
    assert (run["dense"], run["target_sparsity"], run["measured_sparsity"]) == (False, 0.5, 0.499)
    assert run["seeds"] == {"calibration": 42, "eval": 1234} and run["library_versions"] == {"ecoflap": "0.1.0"}
    assert (run["code_version"], run["git_hash"], run["status"]) == ("0.1.0", "5aae9fd", "complete")
    assert run["timings"] == {"eval": 1.5} and run["peak_memory_mb"] == 12.5
    assert run["config"]["run"]["seed"] == 1234 and run["config"]["calibration"]["nsamples"] == 4
    assert run["evaluated_at"] == "2025-11-28T16:00:00"
    metrics = {(m["task"], m["metric"]): m for m in run["metrics"]}
    assert set(metrics) == {("vqa", "acc"), ("vqa", "invalid_rate"), ("caption", "cider")}
    assert metrics["vqa", "acc"] == {
        "task": "vqa", "metric": "acc", "filter": "none", "value": 0.91, "stderr": 0.004,
        "n_samples": 100, "higher_is_better": True, "task_version": "1.0",
    }  # fmt: skip
    assert metrics["vqa", "invalid_rate"]["stderr"] is None  # "N/A" in the document
    assert metrics["vqa", "invalid_rate"]["higher_is_better"] is False
    assert [a["layer"] for a in run["allocation"]] == ["blocks.0.fc", "blocks.1.fc", "blocks.2.fc"]
    assert run["allocation"][0] == {
        "layer": "blocks.0.fc", "tower": "text", "block": "blocks.0", "target": 0.5, "measured": 0.5, "params": 1000,
    }  # fmt: skip
    assert {(a["kind"], a["path"]) for a in run["artefacts"]} == {
        ("checkpoint", "runs/k-read"),
        ("results", "/runs/k-read/results.json"),
    }
    assert store.get_run("missing") is None and store.get_run(999) is None


def test_same_run_key_twice_updates_one_run(db_url):
    store = ResultsStore(db_url)
    first = store.record(document("k-same", {"vqa": {"acc": 0.5, "old_metric": 1.0}}, layers=4))
    created = store.get_run(first)["created_at"]
    second = store.record(document("k-same", {"vqa": {"acc": 0.75}}, layers=2))
    assert first == second
    run = store.get_run("k-same")
    assert [(m["metric"], m["value"]) for m in run["metrics"]] == [("acc", 0.75)]
    assert len(run["allocation"]) == 2 and run["created_at"] == created and run["updated_at"] > created
    assert (count(store, Run), count(store, TaskMetric), count(store, LayerAllocation)) == (1, 1, 2)


def test_failure_in_the_middle_of_a_record_leaves_nothing(db_url, monkeypatch):
    store = ResultsStore(db_url)
    store.record(document("k-kept", {"vqa": {"acc": 0.7}}))
    before = store.get_run("k-kept")
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2].split("(")[0]))
    real_parse = store_module.parse_document

    def parse_with_a_bad_metric_row(doc, artefacts=None):
        parsed = real_parse(doc, artefacts)
        parsed.metrics.append({**parsed.metrics[0], "metric": "broken", "task": None})  # NOT NULL violation
        return parsed

    monkeypatch.setattr(store_module, "parse_document", parse_with_a_bad_metric_row)
    with pytest.raises(EcoflapError, match="cannot record run k-new"):
        store.record(document("k-new"))
    assert any(s.startswith("INSERT INTO runs") for s in statements)  # the run row had gone in
    assert any(s.startswith("INSERT INTO layer_allocations") for s in statements)
    statements.clear()
    with pytest.raises(EcoflapError, match="cannot record run k-kept"):
        store.record(document("k-kept", {"vqa": {"acc": 0.1}}, layers=5))
    assert any(s.startswith("UPDATE runs") for s in statements) and any(s.startswith("DELETE") for s in statements)
    monkeypatch.undo()
    other = ResultsStore(db_url)  # another connection sees the same
    for reader in (store, other):
        assert reader.get_run("k-new") is None
        assert reader.get_run("k-kept") == before
    assert (count(other, Run), count(other, TaskMetric), count(other, LayerAllocation)) == (1, 1, 3)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: d["ecoflap"].pop("run_key"), "ecoflap.run_key: missing key"),
        (lambda d: d.pop("results"), "results: missing key"),
        (lambda d: d.pop("ecoflap"), "no ecoflap block and no model name"),  # not an lm-eval file either
        (lambda d: d["ecoflap"].pop("target_sparsity"), "target_sparsity is required"),
        (lambda d: d["ecoflap"]["allocation"].append({"layer": "blocks.0.fc"}), "'blocks.0.fc' more than once"),
        (lambda d: d["ecoflap"].update(measured_sparsity="half"), "ecoflap.measured_sparsity"),
    ],
)
def test_malformed_document_names_the_key(tmp_path, breakage, message):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    doc = document("k-bad")
    breakage(doc)
    with pytest.raises(EcoflapError, match="invalid results document") as caught:
        store.record(doc)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert count(store, Run) == 0


def test_a_dense_baseline_needs_no_sparsity(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    doc = document("k-dense", dense=True)
    del doc["ecoflap"]["target_sparsity"]
    run = store.get_run(store.record(doc))
    assert run["dense"] is True and run["target_sparsity"] == 0.0 and run["pruner"] is None


# ---- several processes at once ----------------------------------------------------------------


def _writer(url: str, writer: int, barrier, rounds: int) -> None:
    """Opens the store (the first opening migrates an empty database) and records own, pair and shared keys."""
    barrier.wait(timeout=120)
    store = ResultsStore(url)
    for _ in range(rounds):
        for key in (f"own-{writer}", f"pair-{writer // 2}", "shared"):
            store.record(document(key, {"vqa": {"acc": float(writer), "loss": writer + 0.5}}, layers=3, writer=writer))


def test_eight_processes_record_distinct_and_duplicate_keys(db_url):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    processes = [context.Process(target=_writer, args=(db_url, w, barrier, 2)) for w in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [p.exitcode for p in processes] == [0] * 8
    store = ResultsStore(db_url)
    runs = store.runs()
    expected = {f"own-{w}" for w in range(8)} | {f"pair-{p}" for p in range(4)} | {"shared"}
    assert sorted(run["run_key"] for run in runs) == sorted(expected)
    for run in runs:  # each run holds exactly one writer's complete rows: no mix, no duplicate, no loss
        writers = {m["value"] // 1 for m in run["metrics"]} | {a["params"] - 1000 for a in run["allocation"]}
        assert len(run["metrics"]) == 2 and len(run["allocation"]) == 3 and len(writers) == 1, run["run_key"]
        if run["run_key"].startswith("own-"):
            assert writers == {int(run["run_key"][4:])}
    assert (count(store, Run), count(store, TaskMetric), count(store, LayerAllocation)) == (13, 26, 39)


def test_a_folder_another_writer_makes_meanwhile_is_not_called_a_file(tmp_path, monkeypatch):
    """The race the eight writers met: the folder is missing at the first look and there at the next."""
    folder = tmp_path / "data"
    folder.mkdir()
    real_is_dir, looks = Path.is_dir, []

    def missing_at_first(self: Path) -> bool:
        if self == folder and not looks:
            looks.append(self)
            return False
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", missing_at_first)
    assert existing_folder(make_url(f"sqlite:///{folder}/results.db"), folder / "results.db") == tmp_path
    assert looks == [folder]


def test_a_concurrent_insert_of_the_same_key_becomes_an_update(db_url, monkeypatch):
    """PostgreSQL: the second insert waits on the unique index, fails, and is retried as an update.
    SQLite: the second transaction waits at BEGIN IMMEDIATE, then sees the run and updates it."""
    store, other = ResultsStore(db_url), ResultsStore(db_url)
    write_run, races, holding = store_module._write_run, [], threading.Event()

    def counting_write_run(session, parsed):
        try:
            return write_run(session, parsed)
        except store_module._KeyRace:
            races.append(parsed.run_key)
            raise

    def insert_and_hold() -> None:
        with other._session(write=True) as session:
            write_run(session, parse_document(document("k-race", {"vqa": {"acc": 0.1}})))
            holding.set()
            time.sleep(1.0)

    monkeypatch.setattr(store_module, "_write_run", counting_write_run)
    thread = threading.Thread(target=insert_and_hold)
    thread.start()
    holding.wait(timeout=30)
    store.record(document("k-race", {"vqa": {"acc": 0.9}}))
    thread.join()
    assert races == (["k-race"] if db_url.startswith("postgresql") else [])
    assert [m["value"] for m in store.get_run("k-race")["metrics"]] == [0.9]
    assert (count(store, Run), count(store, TaskMetric)) == (1, 1)


# ---- URLs, unreachable databases, migrations ------------------------------------------------


def test_default_url_and_sqlite_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(store_module.ENV_URL, raising=False)
    monkeypatch.setenv(store_module.ENV_DATA_DIR, str(tmp_path / "data"))
    assert default_url() == f"sqlite:///{tmp_path / 'data' / 'results.db'}"
    store = ResultsStore()
    store.record(document("k-default"))
    assert (tmp_path / "data" / "results.db").is_file()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    monkeypatch.delenv(store_module.ENV_DATA_DIR)
    assert default_url().endswith(str(Path("ecoflap") / "results.db"))
    monkeypatch.setenv(store_module.ENV_URL, f"sqlite:///{tmp_path / 'env.db'}")
    assert ResultsStore().get_run("k-default") is None  # the environment's database, not the data folder's
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_database_is_one_masked_line(tmp_path):
    with pytest.raises(StoreUnavailable) as caught:
        ResultsStore(f"postgresql://postgres:s3cret@127.0.0.1:{_closed_port()}/ecoflap")
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message and "postgres:***@127.0.0.1" in message
    assert isinstance(caught.value, EcoflapError)
    with pytest.raises(StoreUnavailable, match="file is a file, not a folder"):
        (tmp_path / "file").write_text("")
        ResultsStore(f"sqlite:///{tmp_path / 'file' / 'results.db'}")
    with pytest.raises(EcoflapError, match="invalid database URL"):
        ResultsStore("not a url")


def _schema_diffs(url: str, metadata: MetaData) -> list:
    engine = create_store_engine(resolve_url(url))
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    engine.dispose()
    return diffs


def test_migrations_create_exactly_the_models_tables(db_url):
    engine = create_store_engine(resolve_url(db_url))
    with engine.connect() as connection, connection.begin():
        upgrade(connection)
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    engine.dispose()
    assert _schema_diffs(db_url, Base.metadata) == []
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["runs"].append_column(Column("extra", Integer))
    assert _schema_diffs(db_url, changed)  # the comparison does see a difference


def test_alembic_command_line_upgrade_and_downgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    ini = str(ROOT / "evaluation" / "results" / "alembic.ini")
    env = {"ECOFLAP_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    for step in ("head", "base"):
        command = [sys.executable, "-m", "alembic", "-c", ini, "upgrade" if step == "head" else "downgrade", step]
        subprocess.run(command, check=True, cwd=ROOT, env=env, capture_output=True)
        if step == "head":
            assert _schema_diffs(url, Base.metadata) == []
    engine = create_store_engine(resolve_url(url))
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}


# ---- references and queries -------------------------------------------------------------------


def test_tags_prefixes_and_latest(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    first = store.record(document("abcdef-111"))
    second = store.record(document("abcdef-222"))
    assert store.resolve("abcdef-1") == first and store.resolve("abcdef-222") == second
    with pytest.raises(EcoflapError, match="matches several runs"):
        store.resolve("abcdef")
    assert store.resolve("abc") is None  # prefixes need 6 characters
    store.tag(first, "baseline")
    assert store.resolve("baseline") == first and store.get_run(first)["tags"] == ["baseline"]
    store.tag("abcdef-222", "baseline")  # a tag names one run: it moves
    assert store.resolve("baseline") == second and store.get_run(first)["tags"] == []
    with pytest.raises(EcoflapError, match="no run 'nope'"):
        store.tag("nope", "x")
    with pytest.raises(EcoflapError, match="invalid tag"):
        store.tag(first, "12")
    assert store.latest_run()["id"] == second
    store.record(document("abcdef-111"))
    assert store.latest_run()["id"] == first


def seed_leaderboard(store: ResultsStore) -> None:
    """Hand-made runs: two dense baselines of mini (the later one counts), methods at 0.5 and 0.6, a failed run."""
    record = store.record
    record(document("mini-dense-old", {"vqa": {"acc": 0.50, "loss": 3.0}}, dense=True))
    record(document("mini-dense", {"vqa": {"acc": (0.80, 0.010), "loss": 2.0}}, dense=True))
    record(document("w1", {"vqa": {"acc": (0.70, 0.020), "loss": 2.5}}))
    record(document("w2", {"vqa": {"acc": (0.74, 0.015), "loss": 2.4}}))
    record(
        document(
            "s1", {"vqa": {"acc": (0.76, 0.012), "loss": 2.6}}, pruner="sparsegpt", scorer=None, allocator="uniform"
        )
    )
    record(document("w3", {"vqa": {"acc": 0.60, "loss": 3.5}}, sparsity=0.6))
    failed = document("w4", {"vqa": {"acc": 0.99, "loss": 0.1}})
    failed["ecoflap"]["status"] = "failed"
    record(failed)
    record(document("big-dense", {"vqa": {"acc": 0.90}}, model="big", dense=True))
    record(document("big-w", {"vqa": {"acc": 0.85}}, model="big"))


def test_leaderboard_against_hand_computed_values(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    seed_leaderboard(store)
    acc = store.leaderboard(model="mini", task="vqa", metric="acc", sparsity=0.5)
    got = [
        (r["rank"], r["method"], r["value"], r["stderr"], r["dense_value"], round(r["delta"], 10), r["runs"])
        for r in acc
    ]
    assert got == [
        (1, "sparsegpt / uniform", 0.76, 0.012, 0.80, -0.04, 1),
        (2, "wanda / ecoflap zeroth-order", 0.74, 0.015, 0.80, -0.06, 2),  # best of w1 0.70, w2 0.74; w4 failed
    ]
    assert acc[1]["run_key"] == "w2"
    loss = store.leaderboard(model="mini", metric="loss", sparsity=0.5)  # lower is better
    assert [(r["method"], r["value"], round(r["delta"], 10)) for r in loss] == [
        ("wanda / ecoflap zeroth-order", 2.4, 0.4),
        ("sparsegpt / uniform", 2.6, 0.6),
    ]
    dense = store.leaderboard(metric="acc", sparsity=0)
    assert [(r["model"], r["method"], r["value"], r["delta"], r["runs"]) for r in dense] == [
        ("big", "dense", 0.90, 0.0, 1),
        ("mini", "dense", 0.80, 0.0, 2),  # the most recent dense run of mini
    ]
    every = store.leaderboard()
    assert len(every) == 2 + 4 + 4  # big: dense + wanda; mini acc and loss: dense, 2 at 0.5, 1 at 0.6 each
    big = [r for r in every if r["model"] == "big" and r["sparsity"] == 0.5]
    assert [(r["value"], round(r["delta"], 10)) for r in big] == [(0.85, -0.05)]
    assert store.leaderboard(task="nothing") == []


# ---- the method identity ------------------------------------------------------------------------


def _record_with_0001_code(connection, doc: dict, key: str) -> None:
    """Insert a run and its metrics as the code of revision 0001 did: the columns of its runs table only."""
    parsed = parse_document(doc)
    runs = Table("runs", MetaData(), autoload_with=connection)
    metrics = Table("task_metrics", MetaData(), autoload_with=connection)
    now = datetime(2026, 11, 28)
    columns = {name: value for name, value in parsed.columns.items() if name in runs.c}
    run_id = connection.execute(
        runs.insert().values(run_key=key, created_at=now, updated_at=now, **columns).returning(runs.c.id)
    ).scalar_one()
    connection.execute(metrics.insert(), [{**row, "run_id": run_id} for row in parsed.metrics])


def test_upgrade_from_0001_keeps_old_runs_and_backfills_their_method(db_url):
    old = document("old-w", {"vqa": {"acc": (0.7, 0.02)}})
    dense = document("old-dense", {"vqa": {"acc": 0.8}}, dense=True)
    engine = create_store_engine(resolve_url(db_url))
    with engine.connect() as connection, connection.begin():
        upgrade(connection, "0001")
        assert "method_key" not in {column["name"] for column in inspect(connection).get_columns("runs")}
        _record_with_0001_code(connection, old, "old-w")
        _record_with_0001_code(connection, dense, "old-dense")
    engine.dispose()
    store = ResultsStore(db_url)  # upgrades to head
    run = store.get_run("old-w")
    assert (run["pruner"], run["target_sparsity"], run["metrics"][0]["value"]) == ("wanda", 0.5, 0.7)
    assert run["method"] == legacy_method("wanda", "zeroth-order", "ecoflap") and run["method"]["nm"] is None
    assert run["method_key"] == parse_document(old).columns["method_key"]  # the migration's key is the reader's
    assert (run["nm"], run["max_sparsity"], run["granularity"], run["per_tower"]) == (None, None, None, None)
    assert run["method_label"] == "wanda / ecoflap zeroth-order"
    assert store.get_run("old-dense")["method"] is None and store.get_run("old-dense")["method_key"] is None
    assert store.record(old) == run["id"] and count(store, Run) == 2  # re-recording the old file updates its row
    assert _schema_diffs(db_url, Base.metadata) == []


@pytest.mark.parametrize(
    ("first", "second", "labels"),
    [
        (
            method(allocator="uniform", scorer=None, scorer_options={}),
            method(allocator="uniform", scorer=None, scorer_options={}, nm="2:4"),
            ["wanda / uniform", "wanda 2:4 / uniform"],
        ),
        (method(), method(max_sparsity=0.7), ["wanda / ecoflap zeroth-order", "wanda / ecoflap zeroth-order cap 0.7"]),
        (method(), method(granularity="layer"), ["wanda / ecoflap zeroth-order", "wanda / ecoflap zeroth-order layer"]),
    ],
    ids=["nm", "max_sparsity", "granularity"],
)
def test_methods_differing_in_one_setting_are_separate_rows(db_url, first, second, labels):
    store = ResultsStore(db_url)
    store.record(document("m-a", {"vqa": {"acc": 0.70}}, method=first))
    store.record(document("m-b", {"vqa": {"acc": 0.74}}, method=second))
    rows = store.leaderboard(metric="acc", sparsity=0.5)
    assert [(r["method"], r["value"], r["runs"]) for r in rows] == [(labels[1], 0.74, 1), (labels[0], 0.70, 1)]
    assert len({r["method_key"] for r in rows}) == 2
    assert store.get_run("m-b")["method"] == second and store.get_run("m-b")["method_label"] == labels[1]


def test_columns_of_the_method_and_the_writers_key(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    doc = document("m-nm", method=method(nm="2:4", granularity="layer", aggregation="avg", per_tower=True))
    doc["ecoflap"]["method_key"] = "f" * 64  # the writer's key is kept as written
    run = store.get_run(store.record(doc))
    assert (run["nm"], run["max_sparsity"], run["granularity"], run["aggregation"], run["per_tower"]) == (
        "2:4", 0.6, "layer", "avg", True
    )  # fmt: skip
    assert run["method_key"] == "f" * 64
    assert run["method_label"] == "wanda 2:4 / ecoflap zeroth-order layer avg per-tower"
    with store.engine.connect() as connection:
        assert connection.scalar(select(Run.id).where(Run.nm == "2:4", Run.granularity == "layer")) == run["id"]
    bad = document("m-bad", method=method(max_sparsity="lots"))
    with pytest.raises(EcoflapError, match=r"ecoflap\.method\.max_sparsity"):
        store.record(bad)


def test_a_run_key_names_one_method(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.record(document("same", method=method()))
    with pytest.raises(EcoflapError, match="run key same is recorded for method .* a run key must include the method"):
        store.record(document("same", method=method(nm="2:4")))
    assert count(store, Run) == 1 and store.get_run("same")["nm"] is None
    assert store.record(document("same", {"vqa": {"acc": 0.9}}, method=method())) == 1  # same method: an update


def test_an_old_and_a_new_method_with_one_label_are_told_apart(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.record(document("old", {"vqa": {"acc": 0.70}}))  # recorded before the method block: settings unknown
    store.record(document("new", {"vqa": {"acc": 0.74}}, method=method()))
    labels = [r["method"] for r in store.leaderboard(metric="acc")]
    assert len(labels) == 2 and len(set(labels)) == 2
    assert all(label.startswith("wanda / ecoflap zeroth-order #") for label in labels)


def test_labels_of_the_writers_methods():
    """The label's defaults are the default job's: PruneConfig.method() at its defaults shows no setting."""
    from ecoflap.core.config import PruneConfig

    cases = {
        "wanda / ecoflap zeroth-order": {},
        "wanda 2:4 / uniform": {"allocator": "uniform", "nm": "2:4"},
        "wanda / ecoflap zeroth-order cap 0.7": {"max_sparsity": 0.7},
        "wanda / ecoflap first-order layer": {"scorer": "first-order", "granularity": "layer"},
        "sparsegpt / uniform cap 0.9": {"pruner": "sparsegpt", "allocator": "uniform", "max_sparsity": 0.9},
        "wanda comparison=row / ecoflap zeroth-order zo_eps=0.01 calibration nsamples=4 seed=1": {
            "comparison": "row", "zo_eps": 0.01, "nsamples": 4, "seed": 1,
        },
    }  # fmt: skip
    for label, settings in cases.items():
        config = PruneConfig(**settings)
        assert method_label(config.method(), config.target) == label
    assert method_label(None) == "dense"


def test_a_default_cap_follows_the_sparsity_within_one_curve() -> None:
    from ecoflap.core.config import PruneConfig
    from ecoflap.evaluation.results.method import series_key

    def key(**settings: float) -> str | None:
        return series_key(PruneConfig(**settings).method())

    assert key(sparsity=0.5) == key(sparsity=0.6)  # caps 0.6 and 0.7: the default rule, one curve
    assert key(sparsity=0.5, max_sparsity=0.8) != key(sparsity=0.5)  # an explicit cap is another method
    assert key(sparsity=0.5, max_sparsity=0.8) == key(sparsity=0.6, max_sparsity=0.8)  # one fixed cap: one curve


def test_method_labels_import_without_torch():
    """The results store, the dashboard and `ecoflap results` label methods; that must not load torch (seconds)."""
    code = "import sys, ecoflap.evaluation.results.method; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
