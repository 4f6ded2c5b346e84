"""``ecoflap results ...``: record, list, leaderboard, show, compare, export, tag; one-line errors."""

from __future__ import annotations

import csv
import io
import json
import socket

import pytest
from click.testing import CliRunner
from results_documents import document, method

from ecoflap.pipelines.cli import cli


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def files(tmp_path):
    """Results files: mini dense baseline, two Wanda runs and a SparseGPT run at 50%."""
    documents = {
        "dense": document("key-dense", {"vqa": {"acc": (0.80, 0.01), "invalid_rate": 0.01}}, dense=True),
        "w1": document("key-w1", {"vqa": {"acc": (0.70, 0.02), "invalid_rate": 0.05}}),
        "w2": document("key-w2", {"vqa": {"acc": (0.74, 0.02), "invalid_rate": 0.04}}),
        "s1": document("key-s1", {"vqa": {"acc": (0.76, 0.02), "invalid_rate": 0.03}}, pruner="sparsegpt"),
    }
    paths = {}
    for name, doc in documents.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    return paths


def run(*args: str, code: int = 0, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, result.output
    if code:
        assert "Traceback" not in result.output and result.stderr.startswith("Error: ")
        assert result.stderr.count("\n") == 1, result.stderr  # one line
    return result


def record_all(db: str, files) -> None:
    out = run("results", "record", str(files["dense"]), "--tag", "baseline", "--db", db).output
    assert out.startswith("recorded run 1 (key-dense, tag baseline) from ")
    run("results", "record", str(files["w1"]), str(files["w2"]), str(files["s1"]), "--db", db)


def test_record_list_show_and_tag(db, files):
    record_all(db, files)
    listed = json.loads(run("results", "list", "--format", "json", "--db", db).output)
    assert [(r["id"], r["run_key"], r["method"], r["tags"]) for r in listed] == [
        (1, "key-dense", "dense", "baseline"),
        (2, "key-w1", "wanda / ecoflap zeroth-order", ""),
        (3, "key-w2", "wanda / ecoflap zeroth-order", ""),
        (4, "key-s1", "sparsegpt / ecoflap zeroth-order", ""),
    ]
    table = run("results", "list", "--db", db).output.splitlines()
    assert table[0].split() == ["id", "key", "model", "method", "sparsity", "measured", "status", "tags", "updated_at"]
    assert table[2].split()[:4] == ["1", "key-dense", "mini", "dense"]
    run("results", "record", str(files["w1"]), "--db", db)  # the same run key again: no new run
    assert len(json.loads(run("results", "list", "--format", "json", "--db", db).output)) == 4
    shown = json.loads(run("results", "show", "baseline", "--format", "json", "--db", db).output)
    assert shown["run_key"] == "key-dense" and shown["tags"] == ["baseline"]
    assert {a["kind"] for a in shown["artefacts"]} == {"results"}
    text = run("results", "show", "key-w2", "--db", db).output
    assert text.startswith("run 3 (key-w2): mini, wanda / ecoflap zeroth-order")
    assert "acc" in text and "0.7400" in text and "blocks.2" in text
    assert run("results", "tag", "key-w2", "best", "--db", db).output == "tagged run 3 (key-w2, tag best)\n"
    run("results", "show", "nothing", "--db", db, code=1)


def test_leaderboard_formats(db, files):
    record_all(db, files)
    rows = json.loads(run("results", "leaderboard", "--metric", "acc", "--format", "json", "--db", db).output)
    got = [(r["sparsity"], r["rank"], r["method"], r["value"], round(r["delta"], 10), r["runs"]) for r in rows]
    assert got == [
        (0.0, 1, "dense", 0.80, 0.0, 1),
        (0.5, 1, "sparsegpt / ecoflap zeroth-order", 0.76, -0.04, 1),
        (0.5, 2, "wanda / ecoflap zeroth-order", 0.74, -0.06, 2),
    ]
    lower = json.loads(
        run(
            "results", "leaderboard", "--metric", "invalid_rate", "--sparsity", "0.5", "--format", "json", "--db", db
        ).output
    )
    assert [(r["method"], r["value"]) for r in lower] == [
        ("sparsegpt / ecoflap zeroth-order", 0.03),  # lower is better
        ("wanda / ecoflap zeroth-order", 0.04),
    ]
    table = run("results", "leaderboard", "--task", "vqa", "--metric", "acc", "--sparsity", "0.5", "--db", db).output
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["model", "task", "metric", "sparsity", "rank", "method"]
    label = "sparsegpt / ecoflap zeroth-order"
    assert lines[2].split()[:5] == ["mini", "vqa", "acc", "0.5000", "1"]
    assert lines[2].split(label)[1].split()[:3] == ["0.7600", "0.0200", "0.8000"]
    parsed = list(csv.DictReader(io.StringIO(run("results", "leaderboard", "--format", "csv", "--db", db).output)))
    assert len(parsed) == 6 and {"pruner", "scorer", "allocator", "run_key"} <= set(parsed[0])
    empty = run("results", "leaderboard", "--model", "nothing", "--db", db)
    assert empty.stdout == "" and "no complete runs match" in empty.stderr


def test_compare_and_export(db, files, tmp_path):
    record_all(db, files)
    rows = json.loads(run("results", "compare", "baseline", "key-w2", "--format", "json", "--db", db).output)
    assert [(r["metric"], r["value_a"], r["value_b"], round(r["delta"], 10), r["better"]) for r in rows] == [
        ("acc", 0.80, 0.74, -0.06, "a"),
        ("invalid_rate", 0.01, 0.04, 0.03, "a"),  # higher invalid rate: worse
    ]
    table = run("results", "compare", "1", "4", "--db", db).output
    assert table.startswith(
        "a: run 1 (key-dense, tag baseline), dense\nb: run 4 (key-s1), sparsegpt / ecoflap zeroth-order\n"
    )
    exported = json.loads(run("results", "export", "--db", db).output)
    assert [r["run_key"] for r in exported] == ["key-dense", "key-w1", "key-w2", "key-s1"]
    assert all(len(r["metrics"]) == 2 and len(r["allocation"]) == 3 for r in exported)
    out = tmp_path / "all.csv"
    result = run("results", "export", "--format", "csv", "-o", str(out), "--db", db)
    assert "wrote 4 runs" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and rows[0]["run_key"] == "key-dense" and rows[0]["tags"] == "baseline"
    assert {(r["run_key"], r["metric"], r["value"]) for r in rows} >= {("key-w2", "acc", "0.74")}


def test_environment_variable_selects_the_database(tmp_path, files):
    env = {"ECOFLAP_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}
    run("results", "record", str(files["w1"]), env=env)
    assert (tmp_path / "env.db").is_file()
    assert json.loads(run("results", "list", "--format", "json", env=env).output)[0]["run_key"] == "key-w1"


def test_bad_input_is_one_line(db, tmp_path, files):
    missing = run("results", "record", str(tmp_path / "none.json"), "--db", db, code=1)
    assert "cannot read results file" in missing.stderr
    (tmp_path / "broken.json").write_text("{not json")
    run("results", "record", str(tmp_path / "broken.json"), "--db", db, code=1)
    bad = json.loads(files["w1"].read_text())
    del bad["ecoflap"]["model"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = run("results", "record", str(tmp_path / "bad.json"), "--db", db, code=1)
    assert "invalid results document: ecoflap.model: missing key" in result.stderr
    run("results", "record", str(files["w1"]), str(files["w2"]), "--tag", "x", "--db", db, code=1)
    run("results", "list", "--db", "nonsense", code=1)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_database_exits_1_with_one_line():
    url = f"postgresql://postgres:hunter2@127.0.0.1:{_closed_port()}/ecoflap"
    result = run("results", "leaderboard", "--db", url, code=1)
    assert result.stderr.startswith(
        "Error: cannot use the results database postgresql+psycopg://postgres:***@127.0.0.1"
    )
    assert "hunter2" not in result.output and result.stdout == ""
    run("regress", "--baseline", "1", "--tolerance", "vqa:acc=0.01", "--db", url, code=1)


def test_leaderboard_show_compare_and_export_tell_methods_apart(db, tmp_path):
    """Runs differing only in N:M, only in the cap or only in granularity: separate rows, labels that say so."""
    uniform = method(allocator="uniform", scorer=None, scorer_options={})
    methods = {
        "m-uni": uniform, "m-nm": uniform | {"nm": "2:4"},
        "m-eco": method(), "m-cap": method(max_sparsity=0.7), "m-layer": method(scorer="first-order",
        scorer_options={"fo_variant": "grad-mag-abs"}, granularity="layer"),
    }  # fmt: skip
    for i, (key, settings) in enumerate(methods.items()):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(document(key, {"vqa": {"acc": 0.6 + i / 100}}, method=settings)))
        run("results", "record", str(path), "--database-url", db)
    table = run("results", "leaderboard", "--metric", "acc", "--database-url", db).output
    labels = ["wanda / uniform", "wanda 2:4 / uniform", "wanda / ecoflap zeroth-order",
              "wanda / ecoflap zeroth-order cap 0.7", "wanda / ecoflap first-order layer"]  # fmt: skip
    body = table.splitlines()[2:]
    assert len(body) == 5 and all(sum(f"  {label}  " in line for line in body) == 1 for label in labels)
    shown = run("results", "show", "m-nm", "--db", db).output
    assert shown.startswith("run 2 (m-nm): mini, wanda 2:4 / uniform\n") and '  method.nm          "2:4"' in shown
    compared = run("results", "compare", "m-eco", "m-cap", "--db", db).output.splitlines()
    assert compared[1] == "b: run 4 (m-cap), wanda / ecoflap zeroth-order cap 0.7"
    assert next(line for line in compared if line.startswith("max_sparsity")).split() == [
        "max_sparsity",
        "0.6",
        "0.7",
        "no",
    ]
    exported = list(csv.DictReader(io.StringIO(run("results", "export", "--format", "csv", "--db", db).output)))
    assert [(r["run_key"], r["method_label"], r["nm"]) for r in exported][:2] == [
        ("m-uni", "wanda / uniform", ""), ("m-nm", "wanda 2:4 / uniform", "2:4")
    ]  # fmt: skip
    assert json.loads(exported[3]["method"])["max_sparsity"] == 0.7


def test_one_spelling_of_the_database_option(tmp_path, files):
    url = f"sqlite:///{tmp_path / 'spelled.db'}"
    run("results", "record", str(files["w1"]), "--database-url", url)
    for args in (["results", "list"], ["regress", "--candidate", "key-w1", "--floors", str(tmp_path / "f.yaml")]):
        (tmp_path / "f.yaml").write_text("vqa: {acc: 0.5}\n")
        assert "key-w1" in run(*args, "--database-url", url).output
        assert "key-w1" in run(*args, "--db", url).output
        assert "key-w1" in run(*args, env={"ECOFLAP_DATABASE_URL": url}).output
    for command in (["results", "list"], ["results", "leaderboard"], ["regress"], ["dashboard"]):
        help_text = run(*command, "--help").output
        assert "--database-url, --db URL" in help_text and "ECOFLAP_DATABASE_URL" in help_text
