"""Bad input to ``ecoflap results``, ``regress`` and ``dashboard``: one ``Error:`` line, exit 1, nothing recorded.

One case per class: database URLs (malformed, unreachable, missing folder, not a database, no driver) in every
command that takes one; results documents of the wrong shape or type; run ids no database holds; tolerances,
floors, tags and sparsities out of range.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from results_documents import document
from test_results_store import postgres_databases  # noqa: F401  (fresh databases on the local server)

from ecoflap.pipelines.cli import cli

SECRET = "hunter2"


def fails(*args: str) -> str:
    """Run the command; it must exit 1 with exactly one line on stderr, ``Error: ...``, and no traceback.

    (``regress`` prints the runs it compares on stdout before it finds a mistake in a tolerance.) Returns the line.
    """
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1, (args, result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stderr.startswith("Error: "), result.output
    assert result.stderr.count("\n") == 1, result.output
    return result.stderr


def ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(document("k-good", {"vqa": {"acc": (0.8, 0.01)}})))
    return path


@pytest.fixture
def db(tmp_path, good) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ok("results", "record", str(good), "--db", url)
    return url


# ---- database URLs, in every command that takes one ----------------------------------------------


@pytest.fixture
def taken_port():
    """A port already listening: a dashboard that wrongly started would fail at once rather than serve forever."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def bad_urls(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """class -> (URL, a word of the fix the message must give)."""
    (tmp_path / "notes.db").write_text("not a database\n")
    return {
        "not a URL": ("foo", "give --database-url"),
        "bad port": (f"postgresql://u:{SECRET}@localhost:notaport/x", "give --database-url"),
        "missing folders": (f"sqlite:///{tmp_path}/no/such/dir/x.db", "create it"),
        "not SQLite": (f"sqlite:///{tmp_path / 'notes.db'}", "give --database-url"),
        "a folder": (f"sqlite:///{tmp_path}", "give --database-url"),
        "no driver": (f"mysql://u:{SECRET}@localhost/x", "install its driver"),
        "unknown dialect": ("nosuchdb://localhost/x", "install its driver"),
    }


COMMANDS = {
    "record": ["results", "record", "{good}"],
    "list": ["results", "list"],
    "leaderboard": ["results", "leaderboard"],
    "show": ["results", "show", "1"],
    "compare": ["results", "compare", "1", "2"],
    "export": ["results", "export", "--format", "csv"],
    "tag": ["results", "tag", "1", "best"],
    "regress": ["regress", "--baseline", "1", "--tolerance", "vqa:acc=0.1"],
    "dashboard": ["dashboard", "--port", "{port}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_database_urls_are_one_line_in_every_command(command, tmp_path, good, taken_port):
    for name, (url, fix) in bad_urls(tmp_path).items():
        args = [arg.format(good=good, port=taken_port) for arg in COMMANDS[command]]
        line = fails(*args, "--db", url)
        shown = url.replace(f":{SECRET}@", ":***@").replace("postgresql://", "")
        assert shown in line and SECRET not in line, (name, line)
        assert fix in line, (name, line)
    assert not (tmp_path / "no").exists()  # no chain of folders made for a mistyped path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json", "notes.db"]  # no database created anywhere


@pytest.fixture
def floors(tmp_path) -> str:
    path = tmp_path / "floors.yaml"
    path.write_text("vqa: {acc: 0.5}\n")
    return str(path)


def test_an_unreachable_server_is_one_line_naming_it(floors):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/ecoflap"
    for args in (["results", "list"], ["results", "show", "1"], ["regress", "--candidate", "1", "--floors", floors]):
        line = fails(*args, "--db", url)
        assert f"postgres:***@127.0.0.1:{port}" in line and SECRET not in line and "server runs" in line


# ---- results documents: wrong shape or type, nothing recorded --------------------------------------


def broken(change: Any) -> dict[str, Any]:
    doc = document("k-bad", {"vqa": {"acc": (0.8, 0.01)}})
    change(doc)
    return doc


BAD_DOCUMENTS: dict[str, tuple[Any, str]] = {
    "a list": ([1, 2], "expected a JSON object, got list"),
    "a number": (3, "expected a JSON object, got int"),
    "a string": ("results", "expected a JSON object, got str"),
    "null": (None, "expected a JSON object, got NoneType"),
    "results a list": (broken(lambda d: d.update(results=[1])), "results: Input should be a valid dictionary"),
    "a task not an object": (broken(lambda d: d["results"].update(vqa=5)), "results.vqa"),
    "a metric as text": (broken(lambda d: d["results"]["vqa"].update({"acc,none": "0.8"})), "'0.8' is not a number"),
    "a metric true": (broken(lambda d: d["results"]["vqa"].update({"acc,none": True})), "True is not a number"),
    "a metric a list": (broken(lambda d: d["results"]["vqa"].update({"acc,none": [0.8]})), "is not a number"),
    "a stderr as text": (broken(lambda d: d["results"]["vqa"].update({"acc_stderr,none": "small"})), "acc_stderr"),
    "ecoflap a list": (broken(lambda d: d.update(ecoflap=[])), "ecoflap: Input should be a valid dictionary"),
    "sparsity as text": (broken(lambda d: d["ecoflap"].update(target_sparsity="half")), "ecoflap.target_sparsity"),
    "sparsity above 1": (broken(lambda d: d["ecoflap"].update(target_sparsity=5)), "less than or equal to 1"),
    "sparsity negative": (broken(lambda d: d["ecoflap"].update(measured_sparsity=-0.1)), "measured_sparsity"),
    "allocation an object": (broken(lambda d: d["ecoflap"].update(allocation={"a": 1})), "ecoflap.allocation"),
    "allocation of 2**70 params": (broken(lambda d: d["ecoflap"]["allocation"][0].update(params=2**70)), "params"),
    "seeds a list": (broken(lambda d: d["ecoflap"].update(seeds=[1])), "ecoflap.seeds"),
    "n-samples as text": (broken(lambda d: d["n-samples"].update(vqa="lots")), "'lots' is not a sample count"),
    "date as text": (broken(lambda d: d.update(date="today")), "date: Input should be a valid number"),
    "date past year 9999": (broken(lambda d: d.update(date=1e30)), "date: Input should be less than"),
    "git hash too long": (broken(lambda d: d.update(git_hash="g" * 100)), "git_hash"),
    "version too long": (broken(lambda d: d["versions"].update(vqa="v" * 100)), "versions.vqa: longer than 64"),
    "metric name too long": (broken(lambda d: d["results"]["vqa"].update({"x" * 300 + ",none": 1.0})), "1 to 128"),
    "NUL in the run key": (broken(lambda d: d["ecoflap"].update(run_key="k\x00")), "ecoflap.run_key: text holds a NUL"),
    "NUL in a metric key": (broken(lambda d: d["results"]["vqa"].update({"a\x00,none": 1.0})), "holds a NUL"),
    "no block, no model": (broken(lambda d: d.pop("ecoflap")), "no ecoflap block and no model name"),
}


@pytest.mark.parametrize("case", BAD_DOCUMENTS)
def test_wrong_documents_are_one_line_and_record_nothing(case, tmp_path):
    value, message = BAD_DOCUMENTS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(value))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    line = fails("results", "record", str(path), "--db", url)
    assert message in line and "nothing recorded" in line and "\x00" not in line, line
    assert not (tmp_path / "results.db").exists()  # checked before the database is opened


def _raw(good: Path, where: tuple[str, ...], literal: str) -> bytes:
    """The good document with the value at ``where`` replaced by a JSON ``literal`` json.dumps cannot write."""
    doc = json.loads(good.read_text())
    inner = doc
    for key in where[:-1]:
        inner = inner[key]
    inner[where[-1]] = "@placeholder@"
    return json.dumps(doc).replace('"@placeholder@"', literal).encode()


RAW_FILES = {
    "sparsity 1e400": (lambda good: _raw(good, ("ecoflap", "target_sparsity"), "1e400"), "less than or equal to 1"),
    "a 401-digit metric": (lambda good: _raw(good, ("results", "vqa", "acc,none"), "1" + "0" * 400), "too large"),
    "not UTF-8": (lambda good: b"\xff\xfe{}", "codec can't decode"),
    "nested 100000 deep": (lambda good: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "not JSON": (lambda good: b"{not json", "cannot read results file"),
}


@pytest.mark.parametrize("case", RAW_FILES)
def test_unreadable_or_out_of_range_files(case, tmp_path, good):
    make, message = RAW_FILES[case]
    path = tmp_path / "odd.json"
    path.write_bytes(make(good))
    floors = tmp_path / "floors.yaml"
    floors.write_text("vqa: {acc: 0.5}\n")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert message in fails("results", "record", str(path), "--db", url)
    assert message in fails("regress", "--candidate", str(path), "--floors", str(floors), "--db", url)
    assert not (tmp_path / "results.db").exists()


def test_an_endless_or_huge_file_is_not_read_whole(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from ecoflap.evaluation.results import comparison

    monkeypatch.setattr(comparison, "MAX_DOCUMENT_BYTES", 1 << 20)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert "larger than 1 MiB" in fails("results", "record", "/dev/zero", "--db", url)
    big = tmp_path / "big.json"
    big.write_text(json.dumps(document("k-big", {"vqa": {f"m{i}": 0.5 for i in range(40_000)}})))
    assert "larger than 1 MiB" in fails("results", "record", str(big), "--db", url)
    assert not (tmp_path / "results.db").exists()


def test_one_bad_file_among_several_records_none(tmp_path, good, db):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken(lambda d: d["ecoflap"].update(target_sparsity="half"))))
    second = tmp_path / "second.json"
    second.write_text(json.dumps(document("k-second")))
    line = fails("results", "record", str(second), str(bad), "--db", db)
    assert str(bad) in line and "nothing recorded" in line
    assert [run["run_key"] for run in json.loads(ok("results", "list", "--format", "json", "--db", db))] == ["k-good"]


@pytest.mark.parametrize("tag", ["x" * 129, "a\tb", "12", "１２", ""])
def test_an_invalid_tag_records_nothing(tag, tmp_path, db):
    second = tmp_path / "second.json"
    second.write_text(json.dumps(document("k-second")))
    assert "invalid tag" in fails("results", "record", str(second), "--tag", tag, "--db", db)
    assert "invalid tag" in fails("results", "tag", "1", tag, "--db", db)
    assert len(json.loads(ok("results", "list", "--format", "json", "--db", db))) == 1


# ---- run ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["99999999999999999999999", "9223372036854775808", "-1", "²", "１", "٣", "0", "1e5", " ", "\x01"]
)
def test_ids_no_database_holds_are_one_line(ref, db, floors):
    for args in (
        ["results", "show", "--db", db, "--", ref], ["results", "compare", "--db", db, "--", ref, "1"],
        ["results", "tag", "--db", db, "--", ref, "x"], ["regress", "--candidate", ref, "--floors", floors, "--db", db],
        ["regress", "--baseline", ref, "--candidate", "1", "--tolerance", "vqa:acc=0.1", "--db", db],
    ):  # fmt: skip
        assert "no run" in fails(*args), args


def test_postgresql_ids_beyond_its_integer_column(postgres_databases):  # noqa: F811
    url = postgres_databases()
    ok("results", "list", "--db", url)
    assert "no run '2147483648'" in fails("results", "show", "2147483648", "--db", url)


# ---- tolerances, floors, sparsities ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tolerance", "message"),
    [
        ("vqa:acc=inf", "finite number >= 0"),
        ("vqa:acc=1e400", "finite number >= 0"),
        ("vqa:acc=nan", "finite number >= 0"),
        ("vqa:acc=-1", "finite number >= 0"),
        ("vqa:acc=-5%", "finite number >= 0"),
        ("vqa:acc=abc%", "'abc' is not a number"),
        ("vqa:acc=%", "'' is not a number"),
        ("vqa:acc", "write TASK:METRIC=DROP or TASK:METRIC=PERCENT%"),
        ("[:[=0.1", "matches no metric"),  # fnmatch patterns: an unclosed [ is a literal, not a crash
        ("[!:]=0.1", "matches no metric"),
        ("\\:*=0.1", "matches no metric"),
    ],
)
def test_bad_tolerances(tolerance, message, db):
    assert message in fails("regress", "--baseline", "1", "--candidate", "1", "--tolerance", tolerance, "--db", db)


@pytest.mark.parametrize(
    ("floors", "message"),
    [
        (b"vqa: {acc: .nan}\n", "not a finite number"),
        (b"vqa: {acc: .inf}\n", "not a finite number"),
        (b"vqa: {acc: [1]}\n", "is not a number"),
        (b"vqa: {acc: true}\n", "True is not a number"),
        (b"\xff\xfe", "cannot read floors file"),
        (b"vqa: [acc]\n", "must map each task"),
        (b"vqa: {acc: 1\n", "cannot read floors file"),
    ],
)
def test_bad_floors(floors, message, tmp_path, db):
    path = tmp_path / "floors.yaml"
    path.write_bytes(floors)
    assert message in fails("regress", "--candidate", "1", "--floors", str(path), "--db", db)


@pytest.mark.parametrize("sparsity", ["nan", "inf", "1.5", "-0.1"])
def test_leaderboard_sparsity_out_of_range(sparsity, db):
    assert "between 0 and 1" in fails("results", "leaderboard", "--sparsity", sparsity, "--db", db)


def test_a_results_file_holding_a_list_is_no_candidate(tmp_path, db, floors):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"task": "vqa"}]))
    assert "expected a JSON object, got list" in fails(
        "regress", "--candidate", str(path), "--floors", floors, "--db", db
    )


def test_export_to_a_missing_folder(tmp_path, db):
    assert "cannot write" in fails("results", "export", "-o", str(tmp_path / "none" / "x.csv"), "--db", db)
