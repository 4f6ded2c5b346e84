"""The dashboard in headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium) on 127.0.0.1.

The database is seeded by real pipeline runs on the tiny models (tests/dashboard_seed.py): tiny-llama dense
and pruned by two methods at two sparsities, tiny-mini-blip2 dense and pruned (two towers). Screenshots
are kept in tests/artifacts/ (git ignores it); each test prints the path of its screenshot.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dashboard_seed import SPARSITIES, seed_database
from results_documents import document

from ecoflap.evaluation.dashboard.app import create_app
from ecoflap.evaluation.results.store import ResultsStore

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2400"]  # fmt: skip
EVIL = "<script>window.__pwned = 1; document.title = 'pwned'</script>"
WAIT_S = 20


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the dashboard server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict[str, Any]:
    """The seeded database's URL and its runs (as the store returns them)."""
    url = seed_database(tmp_path_factory.mktemp("dashboard-seed"))
    store = ResultsStore(url)
    runs = store.runs()
    store.close()
    return {"url": url, "runs": runs}


@pytest.fixture(scope="module")
def site(seeded: dict[str, Any]) -> Iterator[str]:
    with serve(create_app(seeded["url"])) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"the browser tests need {', '.join(missing)}: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='ecoflap-chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def open_page(driver: Any, url: str, ready: str) -> Any:
    """Load ``url`` and wait until the CSS selector ``ready`` is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    present = expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ready))
    return WebDriverWait(driver, WAIT_S).until(present)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    print(f"screenshot: {path}")
    return path


def cells(driver: Any, table: str, column: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f"table#{table} tbody tr td:nth-child({column})")]


def pruned(runs: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    return [run for run in runs if run["model"] == model and not run["dense"]]


# ---- the seeded database ------------------------------------------------------------------------


def test_leaderboard_shows_the_seeded_runs(browser: Any, site: str, seeded: dict[str, Any]):
    open_page(browser, f"{site}/", "table#leaderboard")
    assert browser.title.startswith("Leaderboard")
    run_ids = {int(text) for text in cells(browser, "leaderboard", 12)}
    assert run_ids == {run["id"] for run in seeded["runs"]}  # every run is the best of its method and sparsity
    assert set(cells(browser, "leaderboard", 1)) == {"tiny-llama", "tiny-mini-blip2"}
    assert len(seeded["runs"]) == 1 + 2 * len(SPARSITIES) + 2
    screenshot(browser, "leaderboard")


def test_a_filter_changes_the_rows(browser: Any, site: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    open_page(browser, f"{site}/", "table#leaderboard")
    before = cells(browser, "leaderboard", 1)
    Select(browser.find_element(By.NAME, "model")).select_by_visible_text("tiny-mini-blip2")
    Select(browser.find_element(By.NAME, "metric")).select_by_visible_text("acc")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "model=tiny-mini-blip2" in d.current_url)
    after = cells(browser, "leaderboard", 1)
    assert set(after) == {"tiny-mini-blip2"} and len(after) == 2 < len(before)  # dense and one pruned run
    small = "calibration nsamples=4 score_nsamples=2 score_seqlen=16 seqlen=32"  # the seeded runs' calibration
    assert cells(browser, "leaderboard", 6) == ["dense", f"wanda / ecoflap zeroth-order {small}"]
    assert browser.find_element(By.ID, "row-count").text == "2"


def test_curve_has_one_line_per_method(browser: Any, site: str):
    from selenium.webdriver.common.by import By

    query = "model=tiny-llama&task=wikitext&metric=token_perplexity"
    chart = open_page(browser, f"{site}/curves?{query}", "svg#curves-chart")
    series = chart.find_elements(By.CSS_SELECTOR, "g.series")
    labels = sorted(s.get_attribute("data-series") for s in series)  # one per method, the default cap following
    assert len(labels) == 2 and labels[0].startswith("wanda / ecoflap zeroth-order calibration corpus=corpus.txt@")
    assert labels[1].startswith("wanda / uniform calibration corpus=corpus.txt@") and "#" not in " ".join(labels)
    for line in chart.find_elements(By.CSS_SELECTOR, "polyline.series-line"):
        assert len(line.get_attribute("points").split()) == len(SPARSITIES)
        assert line.size["width"] > 50  # drawn, across the sparsities
    assert len(chart.find_elements(By.CSS_SELECTOR, "line.baseline")) == 1  # the dense run
    assert chart.size["width"] > 300 and chart.size["height"] > 150
    screenshot(browser, "curves")


def test_allocation_chart_is_coloured_by_tower(browser: Any, site: str, seeded: dict[str, Any]):
    from selenium.webdriver.common.by import By

    (run,) = pruned(seeded["runs"], "tiny-mini-blip2")
    chart = open_page(browser, f"{site}/runs/{run['id']}", "svg#allocation-chart")
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert len(bars) == len(run["allocation"]) > 0
    assert [bar.get_attribute("data-tower") for bar in bars] == [row["tower"] for row in run["allocation"]]
    colours = {bar.get_attribute("data-tower"): bar.get_attribute("fill") for bar in bars}
    assert set(colours) == {"vision", "language"} and len(set(colours.values())) == 2
    assert all(bar.size["height"] > 0 for bar in bars)  # rendered, with the allocated sparsity as height
    for key in ("peak-memory", "timings", "seeds", "versions"):
        assert browser.find_element(By.ID, key).text not in ("", "-")
    assert "coarse" in browser.find_element(By.ID, "timings").text
    screenshot(browser, "run")


def test_compare_two_runs(browser: Any, site: str, seeded: dict[str, Any]):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    first, second = pruned(seeded["runs"], "tiny-llama")[:2]
    open_page(browser, f"{site}/compare", "form.filters")
    Select(browser.find_element(By.NAME, "a")).select_by_value(str(first["id"]))
    Select(browser.find_element(By.NAME, "b")).select_by_value(str(second["id"]))
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: f"b={second['id']}" in d.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, "table#compare-metrics tbody tr")) == len(first["metrics"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#compare-chart g.series")) == 2
    screenshot(browser, "compare")


def test_arena_ranks_the_cells_and_draws_each_allocation(browser: Any, site: str, seeded: dict[str, Any]):
    from selenium.webdriver.common.by import By

    from ecoflap.evaluation.results.arena import block_allocation

    open_page(browser, f"{site}/arena?model=tiny-llama&task=wikitext&metric=token_perplexity", "svg#arena-chart-1")
    assert browser.find_element(By.CSS_SELECTOR, "nav a.current").text == "Arena"
    runs = pruned(seeded["runs"], "tiny-llama")
    for n, sparsity in enumerate(SPARSITIES, start=1):
        cells = [r for r in runs if r["target_sparsity"] == sparsity]
        value = {
            r["allocator"]: next(m["value"] for m in r["metrics"] if m["metric"] == "token_perplexity") for r in cells
        }
        table = browser.find_element(By.ID, f"arena-{n}")
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        assert [row[1] for row in rows] == sorted(value, key=value.get)  # lower perplexity first
        assert [row[0] for row in rows] == ["1", "2"] and {row[2] for row in rows} == {"wanda"}
        scoring = {row[1]: row[8] for row in rows}
        assert scoring["uniform"] == "0.0" and float(scoring["ecoflap"]) > 0  # the coarse step's time
        chart = browser.find_element(By.ID, f"arena-chart-{n}")
        lines = {
            g.get_attribute("data-series").split(". ", 1)[1]: g
            for g in chart.find_elements(By.CSS_SELECTOR, "g.series")
        }
        assert set(lines) == {"ecoflap + wanda", "uniform + wanda"}
        for cell in cells:
            blocks = [b["target"] for b in block_allocation(cell["allocation"])]
            points = lines[f"{cell['allocator']} + wanda"].find_element(By.TAG_NAME, "polyline").get_attribute("points")
            heights = [float(p.split(",")[1]) for p in points.split()]
            assert len(heights) == len(blocks) > 1  # one point per block
            order = sorted(range(len(blocks)), key=lambda i: blocks[i])  # a sparser block is drawn higher
            assert all(heights[i] >= heights[j] for i, j in zip(order, order[1:], strict=False))
            assert (len(set(heights)) == 1) == (cell["allocator"] == "uniform")
    screenshot(browser, "arena")


# ---- errors and escaping ------------------------------------------------------------------------


def test_unknown_run_and_escaped_model_name(browser: Any, tmp_path):
    from selenium.webdriver.common.by import By

    url = f"sqlite:///{tmp_path / 'evil.db'}"
    store = ResultsStore(url)
    store.record(document("k-evil", {"vqa": {"acc": 0.5}}, model=EVIL))
    store.close()
    with serve(create_app(url)) as base:
        open_page(browser, f"{base}/runs/k-evil", "svg#allocation-chart")
        assert browser.execute_script("return window.__pwned") is None and browser.title != "pwned"
        assert EVIL in browser.find_element(By.TAG_NAME, "h1").text  # shown as text
        open_page(browser, f"{base}/", "table#leaderboard")
        assert browser.execute_script("return window.__pwned") is None
        assert EVIL in browser.find_element(By.ID, "leaderboard").text
        message = open_page(browser, f"{base}/runs/999", "#error-message")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found" and "no run '999'" in message.text


def test_unreachable_database_page(browser: Any, tmp_path):
    from selenium.webdriver.common.by import By

    with serve(create_app(f"sqlite:///{tmp_path / 'results.db'}")) as base:  # not recorded yet
        message = open_page(browser, f"{base}/", "#error-message")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Database unavailable"
        assert "no results database at" in message.text and "Traceback" not in browser.page_source
        screenshot(browser, "unavailable")
