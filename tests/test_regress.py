"""``ecoflap regress`` (tolerated drops, floors) and the pytest plugin (fixtures, assert_no_regression)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from results_documents import document

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.comparison import check_against_baseline, check_floors, metrics_of, parse_tolerances
from ecoflap.pipelines.cli import cli

pytest_plugins = ["pytester"]

BASELINE = {"vqa": {"acc": 0.91, "invalid_rate": 0.02}, "caption": {"cider": 1.10}}


@pytest.fixture
def db(tmp_path) -> str:
    """A database with the baseline (tagged ``baseline``) and two candidates; cand-ok is the latest."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    runs = {
        "base": BASELINE,
        "cand-bad": {"vqa": {"acc": 0.85, "invalid_rate": 0.06}, "caption": {"cider": 1.12}},
        "cand-ok": {"vqa": {"acc": 0.89, "invalid_rate": 0.015}, "caption": {"cider": 1.05}},
    }
    for key, metrics in runs.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(document(key, metrics)))
        assert CliRunner().invoke(cli, ["results", "record", str(path), "--db", url]).exit_code == 0
    assert CliRunner().invoke(cli, ["results", "tag", "base", "baseline", "--db", url]).exit_code == 0
    return url


def regress(*args: str, code: int):
    result = CliRunner().invoke(cli, ["regress", *args])
    assert result.exit_code == code, result.output
    if code:
        assert (
            result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.output
        )
    return result


def test_within_tolerance_exits_0_and_prints_every_checked_metric(db):
    result = regress("--baseline", "baseline", "--tolerance", "vqa:*=0.02", "--tolerance", "caption:cider=0.1",
                     "--db", db, code=0)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:2] == ["baseline: run 1 (base, tag baseline)", "candidate: run 3 (cand-ok)"]  # default: the latest
    assert lines[2].split() == ["task", "metric", "filter", "baseline", "candidate", "delta", "limit", "status"]
    checked = {(line.split()[0], line.split()[1]): line.split()[-1] for line in lines[4:-1]}
    assert checked == {("caption", "cider"): "ok", ("vqa", "acc"): "ok", ("vqa", "invalid_rate"): "ok"}
    assert lines[-1] == "no regression (3 metrics checked)"  # acc 0.91 -> 0.89 is exactly the allowed 0.02


def test_a_drop_beyond_tolerance_exits_1_naming_the_metric(db):
    result = regress("--baseline", "baseline", "--candidate", "cand-bad", "--tolerance", "*:*=0.03", "--db", db, code=1)
    assert "2 of 3 checked metrics regressed" in result.stderr
    assert "vqa:acc (0.91 -> 0.85, limit drop <= 0.03)" in result.stderr
    assert "vqa:invalid_rate (0.02 -> 0.06, limit rise <= 0.03)" in result.stderr  # lower is better
    assert "caption:cider" not in result.stderr  # it rose
    assert "regressed" in result.stdout and "caption" in result.stdout  # the table lists every checked metric
    regress("--baseline", "baseline", "--candidate", "cand-bad", "--tolerance", "vqa:acc=0.06", "--db", db, code=0)


def test_candidate_from_a_results_file_and_missing_metrics(db, tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps(document("new", {"vqa": {"acc": 0.95}})))
    result = regress(
        "--baseline", "baseline", "--candidate", str(path), "--tolerance", "vqa:*=0.01", "--db", db, code=1
    )
    assert result.stdout.splitlines()[1] == f"candidate: file {path}"
    assert "1 of 2 checked metrics regressed: vqa:invalid_rate (missing from the candidate)" in result.stderr


def test_floors(db, tmp_path):
    floors = tmp_path / "floors.yaml"
    floors.write_text("vqa:\n  acc: 0.88\n  invalid_rate: 0.03\ncaption:\n  cider: 1.0\n")
    regress("--candidate", "cand-ok", "--floors", str(floors), "--db", db, code=0)
    result = regress("--candidate", "cand-bad", "--floors", str(floors), "--db", db, code=1)
    assert (
        "vqa:acc (0.85, limit >= 0.88)" in result.stderr and "vqa:invalid_rate (0.06, limit <= 0.03)" in result.stderr
    )
    floors.write_text("vqa: {bleu: 0.1}\n")
    assert "vqa:bleu (missing" in regress("--candidate", "cand-ok", "--floors", str(floors), "--db", db, code=1).stderr
    floors.write_text("- not a mapping\n")
    assert "must map each task" in regress("--candidate", "1", "--floors", str(floors), "--db", db, code=1).stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "baseline"], "give --tolerance"),
        (["--tolerance", "vqa:acc=0.1"], "--tolerance needs --baseline"),
        (["--baseline", "baseline", "--tolerance", "vqa-acc"], "invalid tolerance 'vqa-acc'"),
        (["--baseline", "baseline", "--tolerance", "vqa:acc=-1"], "must be a finite number >= 0"),
        (["--baseline", "baseline", "--tolerance", "vqa:bleu=0.1"], "matches no metric of the baseline"),
        (["--baseline", "nope", "--tolerance", "vqa:acc=0.1"], "no run 'nope'"),
    ],
)
def test_usage_errors(db, args, message):
    assert message in regress(*args, "--db", db, code=1).stderr


def test_checks_directly():
    baseline = metrics_of(document("b", BASELINE))
    worse = metrics_of(document("c", {"vqa": {"acc": 0.80, "invalid_rate": 0.01}, "caption": {"cider": 1.3}}))
    checks = check_against_baseline(worse, baseline, parse_tolerances(["vqa:acc,none=0.05", "*:*=0"]))
    assert [(c.task, c.metric, c.status) for c in checks] == [
        ("caption", "cider", "ok"),
        ("vqa", "acc", "regressed"),
        ("vqa", "invalid_rate", "ok"),
    ]
    assert [c.status for c in check_floors(worse, {"vqa:acc": 0.8, "vqa:invalid_rate": 0.005})] == ["ok", "regressed"]
    with pytest.raises(EcoflapError, match="not a number"):
        parse_tolerances(["vqa:acc=lots"])


# ---- the pytest plugin (entry point pytest11), run in an inner pytest session ----------------------


def write_documents(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("base.json").write_text(json.dumps(document("b", BASELINE)))
    candidate = {"vqa": {"acc": 0.88, "invalid_rate": 0.02}, "caption": {"cider": 1.10}}
    pytester.path.joinpath("cand.json").write_text(json.dumps(document("c", candidate)))


def test_plugin_fixtures(pytester: pytest.Pytester):
    write_documents(pytester)
    pytester.makepyfile(
        """
        import json, pytest

        def test_store(ecoflap_results_store):
            run_id = ecoflap_results_store.record(json.load(open("base.json")))
            assert ecoflap_results_store.get_run(run_id)["run_key"] == "b"

        @pytest.mark.ecoflap_results("cand.json")
        def test_marker(ecoflap_results):
            assert ecoflap_results["ecoflap"]["run_key"] == "c"

        def test_option(ecoflap_results):
            assert ecoflap_results["ecoflap"]["run_key"] == "b"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "--ecoflap-results", "base.json").assert_outcomes(passed=3)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "option")
    result.assert_outcomes(errors=1)  # at fixture setup
    result.stdout.fnmatch_lines(["*ecoflap_results: no results file*--ecoflap-results PATH*"])


def test_assert_no_regression(pytester: pytest.Pytester):
    write_documents(pytester)
    pytester.makepyfile(
        """
        from ecoflap.evaluation.results.pytest_plugin import assert_no_regression

        def test_within():
            checks = assert_no_regression("cand.json", "base.json", {"vqa:acc": 0.05, "caption:*": 0})
            assert [c.status for c in checks] == ["ok", "ok"]

        def test_beyond():
            assert_no_regression("cand.json", "base.json", ["vqa:*=0.01"])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: 1 of 2 checked metrics regressed: vqa:acc (0.91 -> 0.88, limit drop <= 0.01)",
            "*task*metric*filter*baseline*candidate*delta*limit*status*",
            "*vqa*acc*none*0.9100*0.8800*-0.0300*drop <= 0.01*regressed*",
            "*vqa*invalid_rate*none*0.0200*0.0200*0.0000*rise <= 0.01*ok*",
        ]
    )
