"""pytest plugin (entry point group ``pytest11``): results-store fixtures and ``assert_no_regression``.

- ``ecoflap_results_store``: a ``ResultsStore`` on a fresh SQLite file in the test's tmp_path.
- ``ecoflap_results``: the results document named by ``@pytest.mark.ecoflap_results("path")`` (relative to
  the test file), else ``--ecoflap-results PATH``, else the ini option ``ecoflap_results`` (relative to rootdir).
- ``assert_no_regression(candidate, baseline, {"vqa:acc": 0.01})``: fails with a table of the checked metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

MARKER = "ecoflap_results"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ecoflap", "ecoflap results")
    group.addoption("--ecoflap-results", metavar="PATH", help="results.json that the ecoflap_results fixture loads")
    parser.addini("ecoflap_results", "results.json that the ecoflap_results fixture loads (relative to rootdir)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(path): results.json for ecoflap_results (relative to the test file)")


@pytest.fixture
def ecoflap_results_store(tmp_path: Path) -> Iterator[Any]:
    """A ResultsStore on a fresh SQLite file (migrated to the newest schema)."""
    from ecoflap.evaluation.results.store import ResultsStore

    store = ResultsStore(f"sqlite:///{tmp_path / 'ecoflap-results.db'}")
    yield store
    store.close()


@pytest.fixture
def ecoflap_results(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The results document (validated) named by the marker, --ecoflap-results or the ini option."""
    from ecoflap.core.errors import EcoflapError
    from ecoflap.evaluation.results.comparison import read_document
    from ecoflap.evaluation.results.document import validate

    path = _results_path(request)
    try:
        document = read_document(path)
        validate(document)
    except EcoflapError as exc:
        pytest.fail(str(exc), pytrace=False)
    return document


def _results_path(request: pytest.FixtureRequest) -> Path:
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None and marker.args:
        return Path(request.path).parent / marker.args[0]
    if request.config.getoption("ecoflap_results"):
        return Path(request.config.invocation_params.dir) / request.config.getoption("ecoflap_results")
    if request.config.getini("ecoflap_results"):
        return Path(request.config.rootpath) / request.config.getini("ecoflap_results")
    pytest.fail(
        f"ecoflap_results: no results file (use @pytest.mark.{MARKER}('results.json') or --ecoflap-results PATH)",
        pytrace=False,
    )


def assert_no_regression(
    candidate: Any, baseline: Any, tolerances: Mapping[str, float | str] | Iterable[str]
) -> list[Any]:
    """Fail, with a table of every checked metric, if a candidate metric dropped more than its tolerance.

    ``candidate``/``baseline``: results documents (ecoflap's or plain lm-eval files), paths to them, run dicts
    (``ResultsStore.get_run``) or metric-row lists. ``tolerances``: ``{"TASK:METRIC": 0.01 or "2%"}`` or
    ``["TASK:METRIC=0.01", "TASK:METRIC=2%", ...]``: an absolute drop, or a percentage of the baseline's value
    (``*`` patterns allowed; direction from ``higher_is_better``). Returns the checks.
    """
    __tracebackhide__ = True
    from ecoflap.evaluation.results.comparison import (
        CHECK_COLUMNS,
        check_against_baseline,
        check_rows,
        failure_message,
        metrics_of,
        tolerance_map,
    )
    from ecoflap.evaluation.results.tables import table

    checks = check_against_baseline(metrics_of(candidate), metrics_of(baseline), tolerance_map(tolerances))
    if any(check.failed for check in checks):
        raise AssertionError(f"{failure_message(checks)}\n{table(check_rows(checks), CHECK_COLUMNS)}")
    return checks
