"""The results dashboard over HTTP (Starlette's test client): pages, JSON and CSV twins, charts, errors, read-only."""

from __future__ import annotations

import csv
import io
import re
import socket
from typing import Any

import pytest
from click.testing import CliRunner
from results_documents import document, method
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.testclient import TestClient
from test_results_store import postgres_databases  # noqa: F401  (fresh databases on the local server)

from ecoflap.evaluation.dashboard.app import create_app
from ecoflap.evaluation.dashboard.store import ReadOnlyStore
from ecoflap.evaluation.results.store import ResultsStore, StoreUnavailable

EVIL = "<script>alert('x')</script>"


def mini(key: str, acc: float, **options: Any) -> dict[str, Any]:
    """A mini-blip2-like run: VQA accuracy (higher is better) and invalid rate (lower is better)."""
    return document(key, {"vqa": {"acc": (acc, 0.01), "invalid_rate": round(1 - acc, 3) / 10}}, **options)


def two_towers(doc: dict[str, Any]) -> dict[str, Any]:
    """Give the run's allocation a vision tower of 2 layers before its 3 text layers, targets rising."""
    vision = [
        {"layer": f"vision.blocks.{i}.fc", "tower": "vision", "block": f"vision.blocks.{i}", "target": 0.3 + i / 10,
         "measured": 0.3 + i / 10, "params": 500}
        for i in range(2)
    ]  # fmt: skip
    doc["ecoflap"]["allocation"] = vision + doc["ecoflap"]["allocation"]
    return doc


STEPS = {
    "coarse": {"seconds": 137.25, "start_rss_mb": 811.6, "peak_rss_mb": 2048.4, "peak_device_mb": None,
               "peak_rss_scope": "step", "device": "cpu"},
    "fine": {"seconds": 12.3, "peak_rss_mb": 1274.0, "peak_device_mb": 900.6, "peak_rss_scope": "step",
             "device": "cuda:0"},
    "eval": {"seconds": 38.6, "peak_rss_mb": 1500.0, "peak_device_mb": None, "peak_rss_scope": "process",
             "device": "cpu"},
}  # fmt: skip


def with_steps(doc: dict[str, Any]) -> dict[str, Any]:
    """Give the run each step's time and peak memory, as ``ecoflap run`` records them."""
    doc["ecoflap"]["steps"] = STEPS
    return doc


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    """mini: dense 0.80, wanda/ecoflap at 0.5 and 0.6, wanda/uniform at 0.5 and 0.6; a model named EVIL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'results.db'}"
    store = ResultsStore(url)
    store.record(mini("k-dense", 0.80, dense=True, layers=0))
    store.record(with_steps(two_towers(mini("k-eco-50", 0.76, sparsity=0.5))))
    store.record(mini("k-eco-60", 0.70, sparsity=0.6))
    store.record(mini("k-uni-50", 0.74, sparsity=0.5, allocator="uniform", scorer=None))
    store.record(mini("k-uni-60", 0.61, sparsity=0.6, allocator="uniform", scorer=None))
    store.record(mini("k-evil", 0.5, model=EVIL))
    store.tag("k-eco-50", "candidate")
    store.close()
    return url


@pytest.fixture(scope="module")
def client(db_url: str) -> TestClient:
    with TestClient(create_app(db_url)) as test_client:
        yield test_client


def rows(html: str, table_id: str) -> list[str]:
    body = re.search(rf'<table[^>]*id="{table_id}".*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, f"no table {table_id}"
    return re.findall(r"<tr.*?</tr>", body.group(1), re.S)


def csv_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


# ---- pages and their twins ----------------------------------------------------------------------


def test_leaderboard_page_json_and_csv_agree(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    data = client.get("/leaderboard.json").json()
    table = csv_rows(client.get("/leaderboard.csv"))
    # mini: 2 metrics x (dense + 2 methods x 2 sparsities) = 10 rows; EVIL model: 2 rows
    assert data["total"] == len(data["rows"]) == len(table) == 12 == len(rows(page.text, "leaderboard"))
    eco50 = next(r for r in data["rows"] if r["metric"] == "acc" and r["method"] == "wanda / ecoflap zeroth-order"
                 and r["sparsity"] == 0.5 and r["model"] == "mini")  # fmt: skip
    assert eco50["dense_value"] == 0.80 and eco50["delta"] == pytest.approx(-0.04) and eco50["rank"] == 1
    assert {row["run_key"] for row in table} >= {"k-dense", "k-eco-50", "k-eco-60", "k-uni-50", "k-uni-60"}
    assert 'class="worse">-0.04<' in page.text  # delta against dense, coloured by what is better


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("model=mini&metric=acc", 5),
        ("model=mini&metric=acc&sparsity=0.6", 2),
        ("method=wanda%20/%20uniform", 4),
        ("model=mini&task=vqa&metric=invalid_rate&sparsity=0.5&method=wanda%20/%20ecoflap%20zeroth-order", 1),
        ("model=nobody", 0),
    ],
)
def test_leaderboard_filters(client: TestClient, query: str, expected: int):
    data = client.get(f"/leaderboard.json?{query}").json()
    assert len(data["rows"]) == expected == len(csv_rows(client.get(f"/leaderboard.csv?{query}")))
    page = client.get(f"/?{query}").text
    assert f'<span id="row-count">{expected}</span>' in page
    assert ("No complete runs match" in page) == (expected == 0)


def test_leaderboard_sorts_by_any_column_both_ways(client: TestClient):
    up = client.get("/leaderboard.json?metric=acc&sort=value&order=asc").json()["rows"]
    down = client.get("/leaderboard.json?metric=acc&sort=value&order=desc").json()["rows"]
    assert [r["value"] for r in up] == sorted(r["value"] for r in up)
    assert [r["value"] for r in down] == sorted((r["value"] for r in down), reverse=True)
    deltas = client.get("/leaderboard.json?sort=delta&order=desc").json()["rows"]
    known = [r["delta"] for r in deltas if r["delta"] is not None]
    assert known == sorted(known, reverse=True) and deltas[-1]["delta"] is None  # unknown deltas last
    page = client.get("/?metric=acc&sort=value&order=asc").text
    assert "sort=value&amp;order=desc" in page  # the header link turns the order around
    assert client.get("/leaderboard.json?sort=nonsense").status_code == 400


def test_curves_one_series_per_method(client: TestClient):
    data = client.get("/curves.json?model=mini&task=vqa&metric=acc").json()
    assert [s["method"] for s in data["series"]] == ["wanda / ecoflap zeroth-order", "wanda / uniform"]
    assert [[p["sparsity"] for p in s["points"]] for s in data["series"]] == [[0.5, 0.6], [0.5, 0.6]]
    assert data["dense"]["value"] == 0.80
    html = client.get("/curves?model=mini&task=vqa&metric=acc").text
    chart = re.search(r'<svg id="curves-chart".*?</svg>', html, re.S).group(0)
    lines = re.findall(r'<polyline class="series-line" points="([^"]+)"', chart)
    assert len(lines) == 2 and all(len(points.split()) == 2 for points in lines)
    assert chart.count("<circle") == 4 and 'class="baseline"' in chart
    table = csv_rows(client.get("/curves.csv?model=mini&task=vqa&metric=acc"))
    assert len(table) == 5 and {row["method"] for row in table} == {"dense", "wanda / uniform",
                                                                      "wanda / ecoflap zeroth-order"}  # fmt: skip


def test_curves_defaults_and_bad_choices(client: TestClient):
    first = client.get("/curves.json").json()
    assert (first["model"], first["task"], first["metric"]) == ("<script>alert('x')</script>", "vqa", "acc")
    assert client.get("/curves?model=nobody").status_code == 400
    assert client.get("/curves?model=mini&scale=cubic").status_code == 400
    log = client.get("/curves?model=mini&task=vqa&metric=acc&scale=log").text
    assert "(log)" in log


def test_run_page_shows_settings_and_allocation_by_tower(client: TestClient):
    page = client.get("/runs/candidate")  # a tag; ids and run keys work too
    assert page.status_code == 200
    html = page.text
    for text_ in ("k-eco-50", "wanda / ecoflap zeroth-order", "12.5", "calibration", "1234", "ecoflap</dt>"):
        assert text_ in html
    chart = re.search(r'<svg id="allocation-chart".*?</svg>', html, re.S).group(0)
    bars = re.findall(r'<rect class="bar" data-tower="([^"]+)"[^>]*fill="([^"]+)"', chart)
    assert [tower for tower, _ in bars] == ["vision"] * 2 + ["text"] * 3
    assert len({colour for _, colour in bars}) == 2  # one colour per tower
    assert len(rows(html, "towers")) == 2 and len(rows(html, "blocks")) == 5
    data = client.get("/runs/candidate.json").json()
    assert data["run_key"] == "k-eco-50" and len(data["allocation"]) == 5 and data["tags"] == ["candidate"]
    assert client.get(f"/runs/{data['id']}.json").json() == data == client.get("/runs/k-eco-50.json").json()
    metrics = csv_rows(client.get("/runs/candidate.csv"))
    assert {(m["task"], m["metric"]) for m in metrics} == {("vqa", "acc"), ("vqa", "invalid_rate")}
    allocation = csv_rows(client.get("/runs/candidate/allocation.csv"))
    assert [a["tower"] for a in allocation] == ["vision", "vision", "text", "text", "text"]


def test_run_page_shows_each_steps_time_and_memory(client: TestClient):
    html = client.get("/runs/candidate").text
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows(html, "steps")]
    assert cells == [
        ["coarse", "137.2", "812", "2048", "-", "cpu"],
        ["fine", "12.3", "-", "1274", "901", "cuda:0"],
        ["eval", "38.6", "-", "1500 (process)", "-", "cpu"],
    ]
    assert client.get("/runs/candidate.json").json()["config"]["steps"] == STEPS
    assert 'id="steps"' not in client.get("/runs/k-eco-60").text  # a run recorded without them


def test_dense_run_page_has_no_chart(client: TestClient):
    html = client.get("/runs/k-dense").text
    assert "allocation-chart" not in html and "(a dense run)" in html


def test_runs_and_compare(client: TestClient):
    runs = client.get("/runs.json").json()
    assert len(runs) == 6 == len(csv_rows(client.get("/runs.csv"))) and runs[0]["run_key"] == "k-evil"
    compare = client.get("/compare.json?a=k-dense&b=candidate").json()
    acc = next(m for m in compare["metrics"] if m["metric"] == "acc")
    assert (acc["value_a"], acc["value_b"], acc["better"]) == (0.80, 0.76, "a")
    assert acc["delta"] == pytest.approx(-0.04)
    method = next(s for s in compare["settings"] if s["setting"] == "method")
    assert (method["a"], method["b"], method["same"]) == ("dense", "wanda / ecoflap zeroth-order", False)
    html = client.get("/compare?a=k-dense&b=candidate").text
    assert len(rows(html, "compare-metrics")) == 2 and "compare-chart" in html
    assert len(csv_rows(client.get("/compare.csv?a=k-dense&b=candidate"))) == 2
    assert client.get("/compare").status_code == 200  # the form to choose two runs
    assert client.get("/compare.json").status_code == 400


def test_static_files_are_local(client: TestClient):
    html = client.get("/").text
    assert "<script" not in html  # no scripts at all, from anywhere
    links = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert links and all(link.startswith(("http://testserver/", "/", "?")) for link in links), links
    style = client.get("/static/style.css")
    assert style.status_code == 200 and "svg.chart" in style.text
    assert "default-src 'none'" in client.get("/").headers["content-security-policy"]


# ---- errors -------------------------------------------------------------------------------------


def test_unknown_run_is_a_404_page(client: TestClient):
    page = client.get("/runs/999")
    assert page.status_code == 404 and "<h1>Not found</h1>" in page.text and "no run &#39;999&#39;" in page.text
    assert "Traceback" not in page.text
    assert client.get("/runs/999.json").json() == {"error": "no run '999' in the results database "
                                                   "(give a run id, tag or run key)", "status": 404}  # fmt: skip
    assert client.get("/runs/999.csv").status_code == 404
    assert client.get("/compare?a=999&b=candidate").status_code == 404
    assert client.get("/no/such/page").status_code == 404


def test_bad_parameters_are_a_400_page(client: TestClient):
    page = client.get("/?sparsity=half")
    assert page.status_code == 400 and "sparsity must be a number" in page.text and "Traceback" not in page.text


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nobody@127.0.0.1:{port}/ecoflap",  # nothing listens there
        "sqlite:///{tmp}/missing/results.db",  # no such file: the dashboard creates nothing
    ],
)
def test_unreachable_database_is_an_error_page(url: str, tmp_path, free_port: int):
    url = url.format(port=free_port, tmp=tmp_path)
    with TestClient(create_app(url), raise_server_exceptions=False) as unreachable:
        for path in ("/", "/curves", "/runs/1", "/compare?a=1&b=2"):
            page = unreachable.get(path)
            assert page.status_code == 503, path
            assert "Database unavailable" in page.text and 'id="error-message"' in page.text
            assert "Traceback" not in page.text and 'File "' not in page.text
        assert unreachable.get("/leaderboard.json").json()["status"] == 503
        assert unreachable.get("/leaderboard.csv").text.startswith("error: ")
    assert not (tmp_path / "missing").exists()


def test_failure_inside_a_page_is_a_500_page_without_traceback(db_url: str, monkeypatch: pytest.MonkeyPatch):
    from ecoflap.evaluation.dashboard import views

    def broken(*_args: Any) -> None:
        raise KeyError("internal detail")

    monkeypatch.setattr(views, "run_rows", broken)
    with TestClient(create_app(db_url), raise_server_exceptions=False) as test_client:
        page = test_client.get("/runs")
    assert page.status_code == 500 and "KeyError" in page.text
    assert "internal detail" not in page.text and "Traceback" not in page.text


# ---- escaping and read-only ---------------------------------------------------------------------


def test_model_names_are_shown_as_text(client: TestClient):
    for path in ("/", "/leaderboard?model=%3Cscript%3Ealert('x')%3C/script%3E", "/runs", "/runs/k-evil",
                 "/curves", "/compare?a=k-evil&b=k-dense"):  # fmt: skip
        html = client.get(path).text
        assert EVIL not in html, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html, path
    assert client.get("/runs/k-evil.json").json()["model"] == EVIL  # data twins carry the real name
    assert EVIL in client.get("/leaderboard.csv").text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/leaderboard.json", "/runs/1", "/runs/1.json", "/compare", "/static/style.css"])
def test_only_get_requests(client: TestClient, method: str, path: str):
    response = client.request(method, path)
    assert response.status_code == 405
    assert "Traceback" not in response.text


def test_store_is_opened_read_only(db_url: str):
    store = ReadOnlyStore(db_url)
    try:
        assert len(store.runs()) == 6
        with pytest.raises(OperationalError, match="readonly"), store.engine.begin() as connection:
            connection.execute(text("DELETE FROM runs"))
        with pytest.raises(StoreUnavailable, match="readonly"):
            store.record(mini("k-new", 0.5))
    finally:
        store.close()
    assert len(ResultsStore(db_url).runs()) == 6


def test_postgresql_is_read_only_too(postgres_databases):  # noqa: F811
    url = postgres_databases()
    writer = ResultsStore(url)
    writer.record(two_towers(mini("k-pg", 0.7)))
    writer.close()
    with TestClient(create_app(url)) as pg:
        assert pg.get("/runs/k-pg").status_code == 200
        assert [row["run_key"] for row in pg.get("/leaderboard.json").json()["rows"]] == ["k-pg", "k-pg"]
    store = ReadOnlyStore(url)
    try:
        with pytest.raises(DBAPIError, match="read-only transaction"), store.engine.begin() as connection:
            connection.execute(text("DELETE FROM runs"))
    finally:
        store.close()


def test_read_only_store_refuses_a_database_without_the_schema(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").close()
    with pytest.raises(StoreUnavailable, match="holds no ecoflap results"):
        ReadOnlyStore(f"sqlite:///{tmp_path / 'other.db'}")


# ---- the command --------------------------------------------------------------------------------


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dashboard_command_help_and_taken_port(db_url: str):
    from ecoflap.pipelines.cli import cli

    help_text = CliRunner().invoke(cli, ["dashboard", "--help"]).output
    assert "--db URL" in help_text and "--port" in help_text and "read-only" in help_text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["dashboard", "--db", db_url, "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


def test_methods_differing_in_one_setting_are_separate_rows_in_the_html(tmp_path):
    uniform = method(allocator="uniform", scorer=None, scorer_options={})
    url = f"sqlite:///{tmp_path / 'methods.db'}"
    store = ResultsStore(url)
    settings = [uniform, uniform | {"nm": "2:4"}, method(), method(max_sparsity=0.7), method(granularity="layer")]
    for i, chosen in enumerate(settings):
        store.record(mini(f"m-{i}", 0.6 + i / 100, method=chosen))
    store.close()
    labels = ["wanda / uniform", "wanda 2:4 / uniform", "wanda / ecoflap zeroth-order",
              "wanda / ecoflap zeroth-order cap 0.7", "wanda / ecoflap zeroth-order layer"]  # fmt: skip
    with TestClient(create_app(url)) as client:
        html = client.get("/?metric=acc").text
        cells = [re.findall(r"<td>([^<]*)</td>", row) for row in rows(html, "leaderboard")]
        assert sorted(label for row in cells for label in row if " / " in label) == sorted(labels)
        curves = client.get("/curves.json?metric=acc").json()
        assert sorted(s["method"] for s in curves["series"]) == sorted(labels)
        page = client.get("/runs/m-1").text
        assert "wanda 2:4 / uniform" in page and "<dt>nm</dt><dd>2:4</dd>" in page
        compared = client.get("/compare.json?a=m-2&b=m-3").json()
        cap = next(row for row in compared["settings"] if row["setting"] == "method.max_sparsity")
        assert (cap["a"], cap["b"], cap["same"]) == (0.6, 0.7, False)
