"""The Prefect flows on tiny-llama: one run recorded once, cache reuse, a sweep, bad configuration, no database."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ecoflap-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

from ecoflap.core import job  # noqa: E402
from ecoflap.core.errors import EcoflapError  # noqa: E402
from ecoflap.evaluation.results.store import ResultsStore, StoreUnavailable  # noqa: E402
from ecoflap.pipelines import steps  # noqa: E402
from ecoflap.pipelines.cli import cli  # noqa: E402
from ecoflap.pipelines.run_config import RunConfig  # noqa: E402

TASK = "wikitext"


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (SQLite) for every flow of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_text: str) -> dict[str, Any]:
    """A fresh step cache, results database and corpus; the settings of a small tiny-llama run."""
    monkeypatch.setenv(steps.RUN_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    words = toy_text.split()
    corpus.write_text("\n\n".join(" ".join(words[i : i + 300]) for i in range(0, len(words), 300)))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    settings = {
        "model": "tiny-llama",
        "corpus": str(corpus),
        "nsamples": 4,
        "seqlen": 32,
        "score_nsamples": 2,
        "score_seqlen": 16,
        "tasks": [TASK],
        "limit": 2,
        "database_url": url,
    }
    return {"root": tmp_path, "url": url, "settings": settings}


@pytest.fixture
def score_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of a coarse scorer (the expensive step the cache must spare)."""
    calls: list[str] = []
    registries = steps.default_registries()
    for entry in registries.scorers.entries():
        original = entry.obj.score

        def counted(self, *args: Any, _original=original, **kwargs: Any) -> dict[str, float]:
            calls.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(entry.obj, "score", counted)
    return calls


def progress_artifacts() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))


def run_cli(root: Path, settings: dict[str, Any], *args: str) -> Any:
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    return CliRunner().invoke(cli, ["run", "-C", str(config), *args])


def test_run_records_one_complete_run_and_a_second_run_reuses_every_step(prefect_api, workspace, score_calls) -> None:
    root, settings = workspace["root"], workspace["settings"]
    first = run_cli(root, settings, "-o", "out")
    assert first.exit_code == 0, first.output
    assert score_calls == ["zeroth-order"]
    document = json.loads((root / "out" / "results.json").read_text())
    block = document["ecoflap"]
    assert block["status"] == "complete" and block["pruner"] == "wanda" and block["scorer"] == "zeroth-order"
    assert block["measured_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert len(block["allocation"]) == 28 and block["model_hash"]
    assert (root / "out" / "checkpoint" / "model.safetensors").exists()
    assert set(document["results"]) == {TASK}
    finished = {a.description.split(":")[0] for a in progress_artifacts() if a.data == 100.0}
    assert {"zeroth-order scores", "pruning blocks", "perplexity windows"} <= finished  # one per long step

    second = run_cli(root, settings, "-o", "out")
    assert second.exit_code == 0, second.output
    assert score_calls == ["zeroth-order"]  # the scores came from the cache
    summary = json.loads(second.output.strip().splitlines()[-1])
    runs = ResultsStore(workspace["url"]).runs()
    assert len(runs) == 1 and runs[0]["status"] == "complete"
    assert str(runs[0]["id"]) == str(summary["run_id"])
    assert json.loads((root / "out" / "results.json").read_text())["results"] == document["results"]


def test_step_keys_follow_what_each_step_depends_on(prefect_api, workspace, score_calls) -> None:
    """Prefect's cache: another sparsity reuses the scores; another pruner also the allocation; another seed nothing."""
    from ecoflap.pipelines.flows import run_flow

    def reused(config: RunConfig) -> dict[str, bool]:
        summary = run_flow(
            config.model_copy(update={"output": str(workspace["root"] / "runs" / str(len(score_calls)))})
        )
        return {k: v for k, v in summary["reused"].items() if not k.startswith("task:")}

    base = RunConfig.build(**workspace["settings"] | {"record": False})
    assert reused(base) == {"scores": False, "allocation": False, "checkpoint": False}
    assert reused(base) == {"scores": True, "allocation": True, "checkpoint": True}
    assert reused(base.model_copy(update={"sparsity": 0.6})) == {
        "scores": True,
        "allocation": False,
        "checkpoint": False,
    }
    assert reused(base.model_copy(update={"max_sparsity": 0.7})) == {"scores": True, "allocation": False,
                                                                      "checkpoint": False}  # fmt: skip
    assert reused(base.model_copy(update={"pruner": "magnitude"})) == {"scores": True, "allocation": True,
                                                                        "checkpoint": False}  # fmt: skip
    assert score_calls == ["zeroth-order"]
    assert not any(reused(base.model_copy(update={"seed": 7})).values())  # other windows and perturbations
    assert score_calls == ["zeroth-order"] * 2
    assert reused(base.model_copy(update={"refresh": True})) == {"scores": False, "allocation": False,
                                                                  "checkpoint": False}  # fmt: skip


def test_prune_then_run_reuses_the_coarse_scores_and_reports_the_same_metrics(prefect_api, workspace, score_calls):
    """`ecoflap prune -o A` then `ecoflap run`, same settings: one coarse step, Cached in Prefect, same figures."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    root, settings = workspace["root"], workspace["settings"]

    def coarse_states() -> list[str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="coarse-scores")))
        return [r.state.name for r in runs]

    before = coarse_states()
    (root / "run.yaml").write_text(yaml.safe_dump(settings))
    pruned = CliRunner().invoke(cli, ["prune", "-C", str(root / "run.yaml"), "-o", "A"])
    assert pruned.exit_code == 0, pruned.output
    assert (root / "A" / "model.safetensors").is_file() and (root / "A" / "report.json").is_file()
    assert re.search(r"pruning blocks: 100%\|.*\| 4/4 \[", pruned.output), pruned.output  # tqdm, with its times
    ran = run_cli(root, settings, "-o", "B")
    assert ran.exit_code == 0, ran.output
    assert score_calls == ["zeroth-order"]
    after = coarse_states()
    assert len(after) == len(before) + 2
    assert after.count("Cached") == before.count("Cached") + 1  # prune computed, run reused: Cached in the API
    first, second = (json.loads((root / d / "results.json").read_text()) for d in ("A", "B"))
    assert first["results"] == second["results"] and first["ecoflap"]["run_key"] == second["ecoflap"]["run_key"]


@pytest.mark.parametrize(
    "change", [{"nm": "2:4", "allocator": "uniform"}, {"max_sparsity": 0.7}, {"granularity": "layer"}]
)
def test_runs_that_differ_in_one_setting_are_two_records(prefect_api, workspace, change) -> None:
    """--nm, --max-sparsity and --granularity are part of the method identity: two run keys, two rows."""
    root, settings = workspace["root"], workspace["settings"] | {"allocator": change.get("allocator", "ecoflap")}
    one = run_cli(root, settings, "-o", "one")
    two = run_cli(root, settings | change, "-o", "two")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    blocks = [json.loads((root / d / "results.json").read_text())["ecoflap"] for d in ("one", "two")]
    assert blocks[0]["run_key"] != blocks[1]["run_key"] and blocks[0]["method_key"] != blocks[1]["method_key"]
    key, value = next((k, v) for k, v in change.items() if k != "allocator")
    assert blocks[1]["method"][key] == value and blocks[0]["method"][key] != value
    assert len(ResultsStore(workspace["url"]).runs()) == 2


@pytest.mark.slow  # five flow runs, each evaluated through lm-eval: about a minute on two busy cores
def test_sweep_runs_the_grid_and_one_dense_baseline(prefect_api, workspace) -> None:
    from prefect.artifacts import Artifact

    settings = workspace["settings"] | {"allocator": "uniform", "parallel": 2}
    settings["grid"] = {"pruner": ["wanda", "magnitude"], "sparsity": [0.3, 0.5]}
    result = run_cli(workspace["root"], settings, "-o", "sweep")
    assert result.exit_code == 0, result.output
    runs = ResultsStore(workspace["url"]).runs()
    assert len(runs) == 5
    dense = [r for r in runs if r["dense"]]
    assert len(dense) == 1 and dense[0]["measured_sparsity"] == 0
    pruned = sorted((r["pruner"], r["target_sparsity"]) for r in runs if not r["dense"])
    assert pruned == [("magnitude", 0.3), ("magnitude", 0.5), ("wanda", 0.3), ("wanda", 0.5)]
    for run in runs:
        if not run["dense"]:
            assert run["measured_sparsity"] == pytest.approx(run["target_sparsity"], abs=0.02)
    folders = sorted(p.name for p in (workspace["root"] / "sweep").iterdir())
    assert len(folders) == 5 and "tiny-llama_dense" in folders
    table = Artifact.get("ecoflap-sweep")
    assert table is not None and "tiny-llama_dense" in str(table.data)
    assert any(a.description == "sweep: 5/5 runs done" and a.data == 100.0 for a in progress_artifacts())


BAD_CONFIGS = [
    ({"sparsty": 0.4}, "Error: invalid configuration: sparsty: unknown key"),
    ({"nsamples": "many"}, "Error: invalid configuration: nsamples: Input should be a valid integer"),
    ({"sparsity": 1.5}, "Error: invalid configuration: sparsity: Input should be less than 1"),
    ({"limit": 0}, "Error: invalid configuration: limit: Input should be greater than or equal to 1"),
    ({"grid": {"sparsity": [0.5, 1.2]}}, "Error: invalid configuration: sparsity: Input should be less than 1"),
    ({"grid": {"sparsity": 0.5}}, "Error: invalid configuration: grid.sparsity: must be a non-empty list"),
    ({"pruner": "wandaa"}, "Error: unknown pruner 'wandaa'. Did you mean 'wanda'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
def test_bad_configuration_is_one_line_and_exit_1_before_any_model_loads(
    workspace, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], message: str
) -> None:
    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(job, "load_model", no_loading)
    result = run_cli(workspace["root"], workspace["settings"] | change)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith(message), result.output


def no_loading(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a model was loaded")


def test_an_unreachable_database_is_one_line_within_seconds_before_any_model_loads(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before Prefect starts: no server, no model, no output folder."""
    monkeypatch.setattr(job, "load_model", no_loading)
    start = time.monotonic()
    result = run_cli(
        workspace["root"], workspace["settings"] | {"database_url": "postgresql://127.0.0.1:1/x"}, "-o", "out"
    )
    took = time.monotonic() - start
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot use the results database postgresql"), result.output
    assert took < 5, f"{took:.1f} s"
    assert not (workspace["root"] / "out").exists()


def test_the_flow_checks_the_database_before_any_model_loads(prefect_api, workspace, monkeypatch) -> None:
    """A flow run on a worker (no CLI in front of it) fails at its first task, before the compute."""
    from ecoflap.pipelines.flows import run_flow

    monkeypatch.setattr(job, "load_model", no_loading)
    nobody = "postgresql+psycopg://ecoflap:secret@127.0.0.1:9/results"  # the discard port: refused
    config = RunConfig.build(**workspace["settings"] | {"database_url": nobody, "output": "out"})
    with pytest.raises(
        StoreUnavailable, match=r"^cannot use the results database postgresql\+psycopg://ecoflap:\*\*\*@"
    ):
        run_flow(config)
    assert not (workspace["root"] / "out").exists()


def test_a_database_lost_during_the_compute_is_one_line_exit_1_and_the_results_are_kept(
    prefect_api, workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import task

    from ecoflap.pipelines import flows
    from ecoflap.pipelines import run_cli as run_module

    nobody = "postgresql+psycopg://ecoflap:secret@127.0.0.1:9/results"
    with pytest.MonkeyPatch.context() as patch:  # the checks pass: the database goes away during the compute
        patch.setattr(run_module, "check_database", lambda url: None)
        patch.setattr(flows, "check_database", task(name="check-database")(lambda url: None))
        result = run_cli(workspace["root"], workspace["settings"] | {"database_url": nobody}, "-o", "kept")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    assert (
        errors[0].startswith("Error: results not recorded: cannot use the results database")
        and "secret" not in errors[0]
    )
    assert errors[0].endswith(f"the results are kept in {workspace['root'] / 'kept' / 'results.json'}")
    assert "Traceback" not in result.output
    document = json.loads((workspace["root"] / "kept" / "results.json").read_text())
    assert document["ecoflap"]["status"] == "complete" and set(document["results"]) == {TASK}
    again = run_cli(workspace["root"], workspace["settings"], "-o", "kept")  # the database is back
    assert again.exit_code == 0, again.output
    assert len(ResultsStore(workspace["url"]).runs()) == 1


def test_the_deployments_file_serves_one_deployment_per_suite() -> None:
    from ecoflap.deployments.serve import file_deployments, read_deployments
    from ecoflap.pipelines.run_config import SweepConfig

    entries = read_deployments()
    suites = [e for e in entries if e["entrypoint"].endswith(":sweep")]
    assert len({e["name"] for e in entries}) == len(entries) and len(suites) >= 2
    assert len({e["work_pool"]["name"] for e in entries}) == 1
    runs = [e for e in entries if e["entrypoint"].endswith(":prune_and_evaluate")]
    registries = steps.default_registries()
    crons = set()
    for entry in suites:
        sweep = SweepConfig.model_validate(entry["parameters"]["config"])
        assert sweep.deployment == f"prune-and-evaluate/{runs[0]['name']}" and len(sweep.runs()) > 2
        assert sweep.parallel == 1 and entry["parameters"]["timeout_s"] > 0  # one run at a time, a bounded night
        maker = registries.implementation("model", sweep.base.model)  # real weights, never a test model
        assert maker["distribution"] == "ecoflap" and not maker["object"].startswith("ecoflap_tiny_models")
        crons.add(entry["schedules"][0]["cron"])
    assert len(crons) == len(suites) and all(c.startswith("0 ") and c.endswith(" * * *") for c in crons)
    served = file_deployments()
    assert [d.name for d in served] == [e["name"] for e in entries]
    assert {d.schedules[0].schedule.cron for d in served if d.name in {s["name"] for s in suites}} == crons


def test_a_sweep_through_a_deployment_waits_at_most_its_timeout_and_cancels_what_is_left(prefect_api, workspace):
    """No worker polls the pool: the run stays Scheduled; after the timeout it is cancelled and the sweep fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from ecoflap.pipelines.flows import prune_and_evaluate, run_flow
    from ecoflap.pipelines.run_config import build_sweep

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="nobody-polls", type="process"), overwrite=True)
    prune_and_evaluate.to_deployment(name="idle", work_pool_name="nobody-polls").apply()
    values = workspace["settings"] | {"grid": {"sparsity": [0.4]}, "dense_baseline": False, "output": "sweep"}
    with pytest.raises(EcoflapError, match=r"^no deployment 'prune-and-evaluate/nowhere' on the Prefect server"):
        run_flow(build_sweep(values | {"deployment": "prune-and-evaluate/nowhere"}), timeout_s=5)
    child = "tiny-llama_ecoflap-zeroth-order_wanda_s0.4"
    with pytest.raises(EcoflapError, match=rf"^1 of 1 runs failed \({child}: still Scheduled when the sweep's wait"):
        run_flow(build_sweep(values | {"deployment": "prune-and-evaluate/idle"}), timeout_s=3)
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.name == child]
    assert [r.state.type.value for r in runs] in (["CANCELLING"], ["CANCELLED"])  # no run left waiting


def test_a_run_sent_to_a_worker_names_its_files_and_database_by_absolute_paths(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starts in its own folder: what the caller named relative to its folder must still be found."""
    from ecoflap.pipelines.deployment_runs import for_worker

    root = workspace["root"]
    monkeypatch.delenv("ECOFLAP_DATABASE_URL", raising=False)
    relative = RunConfig.build(**workspace["settings"] | {"corpus": "corpus.txt", "database_url": "sqlite:///r.db"})
    sent = for_worker(relative)
    assert sent.corpus == str(root / "corpus.txt") and sent.database_url == f"sqlite:///{root / 'r.db'}"
    named = for_worker(relative.model_copy(update={"corpus": "wikipedia"}))
    assert named.model == "tiny-llama" and named.corpus == "wikipedia"  # names stay names
    shared = "postgresql+psycopg://ecoflap:secret@db:5432/results"
    assert for_worker(relative.model_copy(update={"database_url": shared})).database_url == shared
    unset = relative.model_copy(update={"database_url": None})
    assert for_worker(unset).database_url is None  # nothing said: the worker's own default
    monkeypatch.setenv("ECOFLAP_DATABASE_URL", "sqlite:///env.db")
    assert for_worker(unset).database_url == f"sqlite:///{root / 'env.db'}"  # the caller's environment said


def test_an_output_folder_of_the_user_is_never_replaced(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o naming a folder with the user's files: one Error line before any model loads, the files untouched."""

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(job, "load_model", no_loading)
    mine = workspace["root"] / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (workspace["root"] / "run.yaml").write_text(yaml.safe_dump(workspace["settings"]))
    for command in ("prune", "run"):
        result = CliRunner().invoke(cli, [command, "-C", str(workspace["root"] / "run.yaml"), "-o", str(mine)])
        assert result.exit_code == 1 and result.output.startswith(f"Error: {mine} exists and is not an ecoflap run")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"
