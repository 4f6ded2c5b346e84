"""``ecoflap arena``: every allocator x pruner cell recorded once through ``ecoflap run``'s flow, resumable,
checked before any compute; the arena's ranking and its identity of a recorded cell on seeded documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from results_documents import document, method
from test_flows import prefect_api, score_calls  # noqa: F401 - the session's Prefect API, the scorer-call counter

from ecoflap.core.allocation import Allocation, AllocationRequest, Allocator
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.plugins import load_plugins
from ecoflap.evaluation.results.arena import (
    Cell,
    arena_markdown,
    arena_rows,
    block_allocation,
    recorded,
    versus_uniform,
    versus_uniform_markdown,
)
from ecoflap.evaluation.results.store import ResultsStore
from ecoflap.pipelines import arena_cli, common, run_cli, steps
from ecoflap.pipelines.cli import cli


class RampAllocator(Allocator):
    """A test allocator: block i of B gets target + step * (i - (B - 1) / 2), later blocks sparser."""

    name = "ramp"
    needs_scores = False
    step = 0.02

    def allocate(self, request: AllocationRequest) -> Allocation:
        blocks = list(dict.fromkeys(layer.block for layer in request.layers))
        middle = (len(blocks) - 1) / 2
        sparsity = {la.name: request.target + self.step * (blocks.index(la.block) - middle) for la in request.layers}
        return Allocation(sparsity, target=request.target, cap=request.cap, method=self.name)


class RampPlugin:
    @hookimpl
    def register_allocators(self, register: Any) -> None:
        register(RampAllocator)


@pytest.fixture
def with_ramp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The plugins plus a third allocator, ``ramp``, for every command and flow step of the test."""
    registries = load_plugins(extra=[("arena-test", RampPlugin())])
    monkeypatch.setattr(common, "registries", lambda strict: registries)
    return registries


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_corpus: Path) -> dict[str, Any]:
    monkeypatch.setenv(steps.RUN_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    small = ["--model", "tiny-llama", "--corpus", str(toy_corpus), "--nsamples", "4", "--seqlen", "32",
             "--score-nsamples", "2", "--score-seqlen", "16", "--task", "wikitext", "--limit", "2",
             "--db", url]  # fmt: skip
    return {"root": tmp_path, "url": url, "args": small}


def arena(*args: str) -> Any:
    return CliRunner().invoke(cli, ["arena", *args])


def dashboard_page(url: str, path: str) -> Any:
    """The dashboard's JSON twin of ``path`` (the HTML page is drawn from the same view)."""
    from starlette.testclient import TestClient

    from ecoflap.evaluation.dashboard.app import create_app

    with TestClient(create_app(url)) as client:
        html, data = client.get(path), client.get(path.replace("?", ".json?", 1))
    assert html.status_code == 200 and data.status_code == 200
    assert html.text.count('class="series"') == sum(len(s["rows"]) for s in data.json()["sections"])  # one line each
    return data.json()


GRID = ["--allocators", "ecoflap,ramp", "--pruners", "wanda,magnitude", "--sparsities", "0.5,0.6"]


def test_a_registered_allocator_and_uniform_recorded_then_skipped(
    prefect_api: Any,  # noqa: F811
    workspace: dict[str, Any],
    with_ramp: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default suite's arena: ramp and the uniform baseline, one pruner, one sparsity; the rerun runs nothing."""
    grid = ["--allocators", "ramp", "--pruners", "magnitude", "--sparsities", "0.5", "--no-dense-baseline"]
    first = arena(*workspace["args"], *grid)
    assert first.exit_code == 0, first.output
    runs = ResultsStore(workspace["url"]).runs()
    assert sorted((r["allocator"], r["pruner"], r["target_sparsity"]) for r in runs) == [
        ("ramp", "magnitude", 0.5), ("uniform", "magnitude", 0.5)]  # fmt: skip
    ramp = next(r for r in runs if r["allocator"] == "ramp")
    blocks = [b["target"] for b in block_allocation(ramp["allocation"])]
    assert blocks == pytest.approx([0.5 + 0.02 * (i - (len(blocks) - 1) / 2) for i in range(len(blocks))])
    assert "| 1 |" in first.output and "| 2 |" in first.output and "0.0 | - |" in first.output  # no scoring cost
    page = dashboard_page(workspace["url"], "/arena?model=tiny-llama&task=wikitext&metric=word_perplexity")
    assert [r["allocator"] for r in page["sections"][0]["rows"]] == [r["allocator"] for r in sorted(
        runs, key=lambda r: next(m["value"] for m in r["metrics"] if m["metric"] == "word_perplexity"))]  # fmt: skip
    monkeypatch.setattr(run_cli, "execute", lambda *a, **k: pytest.fail("a recorded cell ran again"))
    second = arena(*workspace["args"], *grid)
    assert second.exit_code == 0 and "2 recorded, 0 to run" in second.output, second.output
    assert len(ResultsStore(workspace["url"]).runs()) == 2


@pytest.mark.slow
def test_the_grid_records_every_cell_once_and_a_rerun_computes_nothing(
    prefect_api: Any,  # noqa: F811
    workspace: dict[str, Any],
    with_ramp: Any,
    score_calls: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = arena(*workspace["args"], *GRID, "--no-dense-baseline")
    assert first.exit_code == 0, first.output
    assert "12 cells (3 allocators x 2 pruners x 2 sparsities); 0 recorded, 12 to run" in first.output
    assert score_calls == ["zeroth-order"]  # ecoflap's coarse scores: once, for both pruners and sparsities
    runs = ResultsStore(workspace["url"]).runs()
    cells = {(r["allocator"], r["pruner"], r["target_sparsity"]) for r in runs}
    assert len(runs) == 12 and all(r["status"] == "complete" for r in runs)
    assert cells == {
        (a, p, s) for a in ("ecoflap", "ramp", "uniform") for p in ("wanda", "magnitude") for s in (0.5, 0.6)
    }
    for run in runs:
        blocks = [b["target"] for b in block_allocation(run["allocation"])]
        coarse = run["config"]["steps"].get("coarse")
        if run["allocator"] == "ramp":  # the registered allocator's own allocation reached the fine step
            expected = [run["target_sparsity"] + 0.02 * (i - (len(blocks) - 1) / 2) for i in range(len(blocks))]
            assert blocks == pytest.approx(expected)
        if run["allocator"] == "ecoflap":  # its scoring cost recorded with the cell (the cached step's own)
            assert coarse["seconds"] > 0 and coarse["peak_rss_mb"] > 0
        else:
            assert coarse is None
    assert "### tiny-llama, sparsity 0.5: wikitext word_perplexity (lower is better)" in first.output

    monkeypatch.setattr(run_cli, "execute", lambda *a, **k: pytest.fail("a recorded cell ran again"))
    second = arena(*workspace["args"], *GRID, "--no-dense-baseline")
    assert second.exit_code == 0, second.output
    assert "12 recorded, 0 to run" in second.output and score_calls == ["zeroth-order"]
    assert len(ResultsStore(workspace["url"]).runs()) == 12


def test_defaults_are_the_registered_allocators_and_pruners(workspace: dict[str, Any], with_ramp: Any) -> None:
    result = arena(*workspace["args"], "--dry-run")
    assert result.exit_code == 0, result.output
    allocators = [n for n in with_ramp.allocators.names() if n not in ("from-file", "uniform")] + ["uniform"]
    pruners = [n for n in ("wanda", "sparsegpt", "ria") if n in with_ramp.pruners]
    assert (
        "ramp" in allocators
        and f"{len(allocators)} allocators x {len(pruners)} pruners x 2 sparsities" in result.output
    )
    listed = [line.split()[-1] for line in result.output.splitlines()[1:]]
    assert listed[0] == "tiny-llama_dense" and len(listed) == 1 + len(allocators) * len(pruners) * 2
    assert "tiny-llama_ramp_wanda_s0.6" in listed and not any("from-file" in name for name in listed)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allocators", "ecoflp"], "unknown allocator 'ecoflp'. Did you mean 'ecoflap'"),
        (["--pruners", "wandaa"], "unknown pruner 'wandaa'. Did you mean 'wanda'"),
        (["--allocators", "from-file"], "from-file allocates from a file of the user's"),
        (["--sparsities", "half"], "--sparsities 'half': give numbers"),
        (["--sparsities", "1.5"], "sparsity: Input should be less than 1"),
        (["--db", "sqlite:///{root}/a-file"], "file is not a database"),
        (["-o", "{root}/a-file/arena"], "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_error_line_before_any_compute(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    (workspace["root"] / "a-file").write_text("not a folder")
    monkeypatch.setattr(run_cli, "execute", lambda *a, **k: pytest.fail("ran despite bad input"))
    result = arena(*workspace["args"], *[a.format(root=workspace["root"]) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]


# ---- the ranking and the identity of a recorded cell, on seeded documents -----------------------


def _record(store: ResultsStore, key: str, allocator: str, value: float, sparsity: float = 0.5, **extra: Any) -> None:
    scorer = "zeroth-order" if allocator == "ecoflap" else None
    doc = document(key, {"wikitext": {"word_perplexity": value}}, model="m", sparsity=sparsity,
                   method=method(allocator=allocator, scorer=scorer, max_sparsity=sparsity + 0.1))  # fmt: skip
    doc["higher_is_better"] = {"wikitext": {"word_perplexity": False}}
    doc["ecoflap"] |= extra
    store.record(doc)


def test_ranking_orders_cells_by_the_metric_with_their_scoring_cost(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    coarse = {"coarse": {"seconds": 12.5, "peak_rss_mb": 900.0, "peak_device_mb": None}}
    _record(store, "eco", "ecoflap", 30.0, steps=coarse)
    _record(store, "eco-again", "ecoflap", 40.0, steps=coarse)  # a worse run of the same method: not its cell
    _record(store, "uni", "uniform", 25.0)
    _record(store, "owl", "owl", 20.0, steps={"coarse": {"seconds": 3.0, "peak_rss_mb": 500.0, "peak_device_mb": 80.0}})
    _record(store, "uni6", "uniform", 90.0, sparsity=0.6)
    _record(store, "eco6", "ecoflap", 60.0, sparsity=0.6, steps=coarse)
    store.record(document("dense", {"wikitext": {"word_perplexity": 10.0}}, model="m", dense=True))
    rows = arena_rows(store, model="m", metrics={"wikitext": "word_perplexity"})
    ranked = [(r["sparsity"], r["rank"], r["allocator"], r["value"]) for r in rows]
    assert ranked == [(0.5, 1, "owl", 20.0), (0.5, 2, "uniform", 25.0), (0.5, 3, "ecoflap", 30.0),
                      (0.6, 1, "ecoflap", 60.0), (0.6, 2, "uniform", 90.0)]  # fmt: skip
    by = {(r["sparsity"], r["allocator"]): r for r in rows}
    assert (by[0.5, "owl"]["scoring_s"], by[0.5, "owl"]["scoring_peak_mb"]) == (3.0, 80.0)  # device memory first
    assert (by[0.5, "ecoflap"]["scoring_s"], by[0.5, "ecoflap"]["scoring_peak_mb"]) == (12.5, 900.0)
    assert (by[0.5, "uniform"]["scoring_s"], by[0.5, "uniform"]["scoring_peak_mb"]) == (0.0, None)
    assert by[0.5, "owl"]["delta"] == 10.0 and by[0.5, "owl"]["measured_sparsity"] == pytest.approx(0.499)
    table = arena_markdown(rows)
    assert table.index("| 1 | owl | wanda | 0.4990 | 20 | +10 | 3.0 | 80 |") < table.index("| 3 | ecoflap |")
    assert "### m, sparsity 0.6: wikitext word_perplexity (lower is better)" in table
    store.close()


def test_each_allocator_against_uniform_in_the_same_cell() -> None:
    """Lower-is-better perplexity and higher-is-better accuracy, each cell against uniform's of the same pruner and
    sparsity; a cell without a uniform counterpart is not counted."""

    def cell(allocator: str, pruner: str, sparsity: float, value: float, task: str = "wikitext") -> dict[str, Any]:
        lower = task == "wikitext"
        return {"model": "m", "task": task, "metric": "x", "sparsity": sparsity, "pruner": pruner,
                "allocator": allocator, "value": value, "higher_is_better": not lower}  # fmt: skip

    rows = [cell("uniform", "wanda", 0.5, 100.0), cell("uniform", "sparsegpt", 0.5, 80.0),
            cell("ecoflap", "wanda", 0.5, 50.0), cell("ecoflap", "sparsegpt", 0.5, 80.0),
            cell("owl", "wanda", 0.5, 110.0), cell("owl", "wanda", 0.6, 1.0),  # no uniform at 0.6: not counted
            cell("uniform", "wanda", 0.3, 0.40, "vqa"), cell("dlp", "wanda", 0.3, 0.30, "vqa")]  # fmt: skip
    summary = {(e["task"], e["allocator"]): e for e in versus_uniform(rows)}
    assert set(summary) == {("wikitext", "ecoflap"), ("wikitext", "owl"), ("vqa", "dlp")}
    eco, owl, dlp = summary["wikitext", "ecoflap"], summary["wikitext", "owl"], summary["vqa", "dlp"]
    assert (eco["cells"], eco["at_or_above"], eco["never_below"]) == (2, 2, True)  # a tie counts as not below
    assert (eco["worst"], eco["best"]) == (0.0, 0.5)
    assert (owl["cells"], owl["at_or_above"], owl["never_below"]) == (1, 0, False)
    assert owl["worst"] == pytest.approx(-0.1)
    assert (dlp["at_or_above"], dlp["worst"]) == (0, pytest.approx(-0.25))
    table = versus_uniform_markdown(versus_uniform(rows))
    assert "| m | wikitext x | ecoflap | 2 of 2 (never below) | +0.0% | +50.0% |" in table


def test_block_allocation_is_weighted_by_parameters() -> None:
    rows = [{"layer": "b0.q", "block": "b0", "target": 0.2, "params": 100},
            {"layer": "b0.mlp", "block": "b0", "target": 0.8, "params": 300},
            {"layer": "b1.q", "block": "b1", "target": 0.5, "params": None},
            {"layer": "b2.q", "block": "b2", "target": None, "params": 10}]  # fmt: skip
    assert block_allocation(rows) == [{"block": "b0", "target": pytest.approx(0.65)}, {"block": "b1", "target": 0.5}]


def test_a_cell_is_recorded_only_with_the_same_method_evaluation_and_tasks() -> None:
    evaluation = {"limit": 2, "seed": 1234, "task_args": {}, "data": None}
    run = {"model": "m", "method_key": "k1", "status": "complete",
           "config": {"evaluation": evaluation, "tasks": {"wikitext": {}, "mmlu": {}}}}  # fmt: skip
    same = Cell("m", "k1", Cell.settings(dict(reversed(evaluation.items()))), ("wikitext",))
    cells = [same, Cell("m", "k2", same.evaluation, ("wikitext",)),
             Cell("m", "k1", Cell.settings(evaluation | {"limit": 3})),
             Cell("m", "k1", same.evaluation, ("vqa",)), Cell("m", "k1", same.evaluation, (), ("vqa", "wikitext")),
             Cell("m", "k1", same.evaluation, (), ("vqa",)), Cell("other", "k1", same.evaluation)]  # fmt: skip
    assert recorded([run], cells) == [True, False, False, False, True, False, False]
    assert recorded([run | {"status": "failed"}], [same]) == [False]
    assert recorded([run | {"config": {"tasks": {"wikitext": {}}}}], [same]) == [False]  # no evaluation recorded


def test_table_writes_the_json_the_readme_table_comes_from(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultsStore(url)
    _record(store, "uni", "uniform", 25.0)
    _record(store, "eco", "ecoflap", 30.0)
    store.close()
    out = tmp_path / "bench" / "arena.json"
    result = CliRunner().invoke(cli, ["arena", "--table", "--db", url, "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert [(r["rank"], r["allocator"]) for r in saved["rows"]] == [(1, "uniform"), (2, "ecoflap")]
    assert saved["rows"][0]["blocks"] == [{"block": f"blocks.{i}", "target": 0.5} for i in range(3)]
    assert "| 1 | uniform | wanda |" in result.output and saved["command"].startswith("ecoflap arena --table")
    assert [(e["allocator"], e["never_below"]) for e in saved["versus_uniform"]] == [("ecoflap", False)]
    assert "| m | wikitext word_perplexity | ecoflap | 0 of 1 | -20.0% | -20.0% |" in result.output
    missing = CliRunner().invoke(
        cli, ["arena", "--table", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--json", str(out)]
    )
    assert missing.exit_code == 1 and missing.output.startswith("Error: no results database at")
    assert arena_cli.DEFAULT_TABLE == Path("benchmarks/results/arena.json")


def test_prune_compare_puts_the_run_beside_uniform_and_dense(
    prefect_api: Any,  # noqa: F811
    workspace: dict[str, Any],
    with_ramp: Any,
) -> None:
    """``ecoflap prune --compare``: the run, uniform at the same budget and pruner, and dense, each recorded, each in
    ROOT/<run name>, printed side by side (dense, uniform, the run)."""
    root = workspace["root"] / "compare"
    method = ["--allocator", "ramp", "--pruner", "magnitude", "--sparsity", "0.5"]
    result = CliRunner().invoke(cli, ["prune", *workspace["args"], *method, "--compare", "-o", str(root)])
    assert result.exit_code == 0, result.output
    runs = ResultsStore(workspace["url"]).runs()
    assert sorted((r["allocator"] or "dense", r["target_sparsity"]) for r in runs) == [
        ("dense", 0.0), ("ramp", 0.5), ("uniform", 0.5)]  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["tiny-llama_dense", "tiny-llama_ramp_magnitude_s0.5", "tiny-llama_uniform_magnitude_s0.5"])  # fmt: skip
    lines = result.output.splitlines()  # stderr's progress bars may share the header's line: find it by its text
    start = next(i for i, line in enumerate(lines) if "| method | sparsity | per tower | wikitext " in line)
    table = ["| method"] + [line for line in lines[start + 1 :] if line.startswith("| ")]
    methods = [line.split(" | ")[0].split(" calibration ")[0] for line in table[2:]]  # the toy calibration shown
    assert methods == ["| dense", "| magnitude / uniform", "| magnitude / ramp"]
    sparsity = [line.split(" | ")[1] for line in table[2:]]
    assert sparsity[0] == "0" and float(sparsity[2]) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--allocator", "uniform"], "--compare puts a run beside uniform and dense"),
        (["--no-eval"], "--compare compares evaluations"),
    ],  # fmt: skip
)
def test_prune_compare_bad_input_is_one_line(workspace: dict[str, Any], extra: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["prune", *workspace["args"], "--compare", *extra])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {message}"), result.output
    assert len(result.output.strip().splitlines()) == 1 and not (workspace["root"] / "runs").exists()
