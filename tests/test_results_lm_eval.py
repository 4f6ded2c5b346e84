"""Plain lm-eval results files in ``results record`` and ``regress``, and relative tolerances in the gate."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from results_documents import document, lm_eval_results

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.comparison import (
    Tolerance,
    check_against_baseline,
    metrics_of,
    parse_tolerances,
    tolerance_map,
)
from ecoflap.evaluation.results.document import LM_EVAL_NOTE
from ecoflap.evaluation.results.store import ResultsStore
from ecoflap.pipelines.cli import cli


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    if code:
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.output
    return result


@pytest.fixture
def files(tmp_path):
    """lm-eval files of a dense model (ppl 37.52) and two candidates: ppl +1.5% (acc -0.01), ppl +3% (acc -0.03)."""
    paths = {}
    for name, ppl, acc in (("base", 37.52, 0.4369), ("close", 38.0828, 0.4269), ("far", 38.6456, 0.4069)):
        paths[name] = tmp_path / f"results_{name}.json"
        paths[name].write_text(json.dumps(lm_eval_results(word_perplexity=ppl, acc=acc), indent=2))
    return paths


def test_a_plain_lm_eval_file_is_recorded_as_a_dense_run_keyed_by_its_content(tmp_path, files):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    out = invoke("results", "record", str(files["base"]), "--tag", "lm-base", "--db", url).stdout
    assert "from " + str(files["base"]) in out and "plain lm-eval results: method unknown, recorded as dense" in out
    run = ResultsStore(url).require_run("lm-base")
    content = json.dumps(json.loads(files["base"].read_text()), sort_keys=True, separators=(",", ":"))
    assert run["run_key"] == hashlib.sha256(content.encode()).hexdigest()
    assert (run["model"], run["dense"], run["method"], run["method_label"]) == (
        "EleutherAI/pythia-160m", True, None, "dense"
    )  # fmt: skip
    assert run["config"]["source"] == LM_EVAL_NOTE and run["config"]["run"]["model"] == "hf"
    assert run["library_versions"] == {"lm_eval": "0.4.13"} and run["git_hash"] == "8bc4620"
    metrics = {(m["task"], m["metric"]): m for m in run["metrics"]}
    assert set(metrics) == {("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("wikitext", "word_perplexity"),
                            ("wikitext", "byte_perplexity"), ("wikitext", "bits_per_byte")}  # fmt: skip
    ppl = metrics[("wikitext", "word_perplexity")]
    assert (ppl["value"], ppl["stderr"], ppl["higher_is_better"], ppl["n_samples"], ppl["task_version"]) == (
        37.52,
        None,
        False,
        62,
        "2.0",
    )  # fmt: skip  ("N/A" stderr -> None)
    acc = metrics[("arc_easy", "acc")]
    assert (acc["value"], acc["stderr"], acc["n_samples"]) == (0.4369, 0.010178, 2376)
    pretty = files["base"].with_name("same.json")  # the same content written differently: the same run
    pretty.write_text(json.dumps(json.loads(files["base"].read_text())))
    invoke("results", "record", str(pretty), "--db", url)
    invoke("results", "record", str(files["far"]), "--db", url)  # other content: another run
    listed = json.loads(invoke("results", "list", "--format", "json", "--db", url).stdout)
    assert [row["method"] for row in listed] == ["dense", "dense"]
    board = json.loads(invoke("results", "leaderboard", "--metric", "acc", "--format", "json", "--db", url).stdout)
    assert [(row["model"], row["method"], row["value"]) for row in board] == [
        ("EleutherAI/pythia-160m", "dense", 0.4069)
    ]  # fmt: skip  (the latest)


@pytest.mark.parametrize(
    ("model_args", "model_name", "model"),
    [
        ("pretrained=EleutherAI/pythia-70m,dtype=float32", None, "EleutherAI/pythia-70m"),
        ({"pretrained": "EleutherAI/pythia-70m", "dtype": "float32"}, None, "EleutherAI/pythia-70m"),
        ("peft=me/adapter,pretrained=EleutherAI/pythia-70m", None, "me/adapter"),  # lm-eval's own order
        ("pretrained=ignored", "out/pruned-smollm2", "out/pruned-smollm2"),  # the tracker's model_name first
    ],
)
def test_the_model_name_of_an_lm_eval_file(tmp_path, model_args, model_name, model):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    run_id = store.record(lm_eval_results(model_args=model_args, model_name=model_name))
    assert store.get_run(run_id)["model"] == model


def test_an_lm_eval_file_without_a_model_is_one_line(tmp_path):
    path = tmp_path / "anonymous.json"
    path.write_text(json.dumps(lm_eval_results(model_args="batch_size=8", model_name=None)))
    result = invoke("results", "record", str(path), "--db", f"sqlite:///{tmp_path / 'r.db'}", code=1)
    assert "no ecoflap block and no model name" in result.stderr and not (tmp_path / "r.db").exists()


def test_regress_between_lm_eval_files_with_relative_and_absolute_tolerances(files):
    base, close, far = (str(files[name]) for name in ("base", "close", "far"))
    gate = ["--baseline", base, "--tolerance", "wikitext:word_perplexity=2%", "--tolerance", "arc_easy:acc=0.02"]
    result = invoke("regress", *gate, "--candidate", close)
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"baseline: file {base}", f"candidate: file {close}"]
    ppl = next(line for line in lines if "word_perplexity" in line)
    assert ppl.split()[-1] == "ok" and "rise <= 2% (0.7504)" in ppl  # 2% of 37.52
    assert lines[-1] == "no regression (2 metrics checked)"
    failed = invoke("regress", *gate, "--candidate", far, code=1).stderr
    assert "2 of 2 checked metrics regressed" in failed
    assert "wikitext:word_perplexity (37.52 -> 38.65, limit rise <= 2% (0.7504))" in failed
    assert "arc_easy:acc (0.4369 -> 0.4069, limit drop <= 0.02)" in failed
    invoke("regress", "--baseline", base, "--candidate", far, "--tolerance", "wikitext:*=3.1%")  # every ppl metric


def test_regress_against_a_recorded_lm_eval_baseline(tmp_path, files):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    invoke("results", "record", str(files["base"]), "--tag", "dense", "--db", url)
    key = ResultsStore(url).require_run("dense")["run_key"]
    for baseline in ("dense", key[:8]):  # its tag, or a prefix of its run key (the content hash)
        result = invoke("regress", "--baseline", baseline, "--candidate", str(files["far"]), "--tolerance",
                        "wikitext:word_perplexity=5%", "--db", url)  # fmt: skip
        assert result.stdout.startswith(f"baseline: run 1 ({key[:12]}, tag dense)")
        assert result.stdout.endswith("no regression (1 metrics checked)\n")


def test_relative_tolerance_of_a_higher_is_better_metric():
    baseline = metrics_of(document("b", {"vqa": {"acc": 0.80}}))
    drop_4pc = metrics_of(document("c", {"vqa": {"acc": 0.768}}))  # 4% of 0.80 = 0.032
    assert check_against_baseline(drop_4pc, baseline, parse_tolerances(["vqa:acc=4%"]))[0].status == "ok"
    assert check_against_baseline(drop_4pc, baseline, parse_tolerances(["vqa:acc=3.9%"]))[0].status == "regressed"
    assert check_against_baseline(drop_4pc, baseline, {"vqa:acc": 0.032})[0].status == "ok"  # a float: absolute
    zero = metrics_of(document("z", {"vqa": {"acc": 0.0}}))
    assert check_against_baseline(zero, zero, parse_tolerances(["vqa:acc=10%"]))[0].status == "ok"


def test_tolerance_spellings():
    assert tolerance_map(["a:b=0.5", "c:d=2%", "e:f= 150% "]) == {
        "a:b": Tolerance(0.5), "c:d": Tolerance(0.02, relative=True), "e:f": Tolerance(1.5, relative=True)
    }  # fmt: skip
    assert tolerance_map({"a:b": 0.5, "c:d": "2%"}) == {"a:b": Tolerance(0.5), "c:d": Tolerance(0.02, True)}
    assert str(Tolerance(0.02, True)) == "2%" and str(Tolerance(0.5)) == "0.5"
    for bad in (["a:b=inf"], ["a:b=-1%"], ["a:b=x%"], {"a:b": True}, {"ab": 0.1}):
        with pytest.raises(EcoflapError):
            tolerance_map(bad)


def test_regress_help_documents_both_kinds_of_tolerance():
    text = invoke("regress", "--help").stdout
    assert "TASK:METRIC=DROP|PCT%" in text and "wikitext:word_perplexity=2%" in text and "lm-eval" in text


def test_assert_no_regression_takes_lm_eval_files_and_percentages(files):
    from ecoflap.evaluation.results.pytest_plugin import assert_no_regression

    checks = assert_no_regression(files["close"], files["base"], {"wikitext:word_perplexity": "2%"})
    assert [(c.metric, c.status) for c in checks] == [("word_perplexity", "ok")]
    with pytest.raises(AssertionError, match=r"wikitext:word_perplexity \(37.52 -> 38.65, limit rise <= 2%"):
        assert_no_regression(str(files["far"]), str(files["base"]), ["wikitext:word_perplexity=2%"])
