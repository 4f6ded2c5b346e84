"""Prefect flows: ``prune_and_evaluate`` (one run) and ``sweep`` (a grid of runs, the dense baseline once per model).

Each Prefect task calls one function of :mod:`ecoflap.pipelines.steps` and passes keys, paths and small values;
the steps cache their results on disk, so a repeated or crashed run resumes where it stopped. With no
``PREFECT_API_URL`` the flows run against Prefect's ephemeral API (SQLite); with one, against that server.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.futures import as_completed
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.states import Failed, State

from ecoflap.core.errors import EcoflapError
from ecoflap.core.progress import terminal_bars
from ecoflap.core.provenance import read_json
from ecoflap.evaluation.results.store import check_writable
from ecoflap.pipelines import steps
from ecoflap.pipelines.deployment_runs import through_deployment
from ecoflap.pipelines.prefect_server import ensure_temporary_server
from ecoflap.pipelines.run_config import EvalRequest, RunConfig, SweepConfig

Step = dict[str, Any]
_SLOTS: dict[str, threading.Semaphore] = {}  # sweep id -> how many of its runs may work at once


class LoggedProgress:
    """A long step's progress: logged at each quarter, and a Prefect progress artifact of the task run."""

    def __init__(self, *, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self.logged, self.shown = max(total, 1), desc, 0, 0, 0
        self.artifact = create_progress_artifact(0.0, description=desc)

    def update(self, n: int = 1) -> None:
        self.done += n
        quarter = 4 * self.done // self.total
        if quarter > self.logged:
            self.logged = quarter
            get_run_logger().info(f"{self.desc}: {self.done}/{self.total}")
        percent = min(100 * self.done // self.total, 100)
        if percent >= self.shown + 5 or (percent == 100 and self.shown < 100):  # at most 20 artifact updates
            self.shown = percent
            update_progress_artifact(
                self.artifact, float(percent), description=f"{self.desc}: {self.done}/{self.total}"
            )

    def close(self) -> None:
        return None


def _log(message: str) -> None:
    get_run_logger().info(message)


def _registries() -> Any:
    return steps.default_registries()


class StepKey(CachePolicy):
    """Prefect's cache key of a step = our key function over the step's inputs (``pipelines.steps``)."""

    def __init__(self, key: Callable[..., str]) -> None:
        super().__init__()
        self.key = key

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kw: Any) -> str:
        return self.key(**inputs)


def _checkpoint_key(config: RunConfig, identity: Step, allocated: Step, scores: Step | None) -> str:
    return steps.checkpoint_key(config, identity, allocated)


def _eval_key(request: EvalRequest, name: str) -> str:
    return steps.eval_key(request, name, _registries())


# ---- tasks: one step each ---------------------------------------------------------------------------
@task(name="check-database", cache_policy=NO_CACHE)
def check_database(url: str | None) -> None:
    """The results database accepts writes (else one line: EcoflapError), before any model loads."""
    check_writable(url)


@task(name="identify-model", cache_policy=NO_CACHE)
def identify_model(config: RunConfig) -> Step:
    return steps.identify(config, _registries(), _log)


@task(name="coarse-scores", cache_policy=StepKey(steps.scores_key), persist_result=True, result_serializer="json")
def coarse_scores(config: RunConfig, identity: Step) -> Step | None:
    return steps.coarse_scores(config, identity, _registries(), _log, terminal_bars(LoggedProgress))


@task(name="allocation", cache_policy=StepKey(steps.allocation_key), persist_result=True, result_serializer="json")
def allocation(config: RunConfig, identity: Step, scores: Step | None) -> Step:
    return steps.allocation_step(config, identity, scores, _registries(), _log)


@task(name="fine-step", cache_policy=StepKey(_checkpoint_key), persist_result=True, result_serializer="json")
def fine_step(config: RunConfig, identity: Step, allocated: Step, scores: Step | None) -> Step:
    return steps.fine_step(config, identity, allocated, scores, _registries(), _log, terminal_bars(LoggedProgress))


@task(
    name="evaluate",
    cache_policy=StepKey(_eval_key),
    persist_result=True,
    result_serializer="json",
    task_run_name="evaluate-{name}",
)
def evaluate(request: EvalRequest, name: str) -> Step:
    return steps.evaluate_task(request, name, _registries(), _log, LoggedProgress)


@task(name="identify-evaluated-model", cache_policy=NO_CACHE)
def identify_evaluated(request: EvalRequest) -> EvalRequest:
    """The hash of the evaluated model's dense weights (from the checkpoint's report, else its own weights)."""
    return steps.identify_request(request, _registries(), _log)


@task(name="write-results", cache_policy=NO_CACHE)
def write_results(
    request: EvalRequest, tasks: list[str], evaluations: list[Step], output: str, save_model: bool, overwrite: bool
) -> str:
    document = steps.assemble(request, tasks, evaluations)
    return str(steps.write_run_folder(document, Path(output), request.checkpoint, save_model, overwrite))


@task(name="record-results", cache_policy=NO_CACHE)
def record_results(results_path: str, database_url: str | None) -> Step:
    """The run's row in the results database: ``{"run_id": ...}``, or ``{"error": ...}`` when unreachable."""
    from ecoflap.evaluation.results.store import StoreUnavailable

    document = read_json(results_path)
    try:
        return {"run_id": steps.record(document, database_url, artefacts={"results": results_path})}
    except StoreUnavailable as exc:
        message = f"results not recorded: {exc}; the results are kept in {results_path}"
        get_run_logger().warning(message)
        return {"error": message}


def _cached(step: Any, refresh: bool, *args: Any) -> tuple[Any, bool]:
    """Run a cached step with its results persisted in the run cache; (value, whether Prefect reused it)."""
    state = step.with_options(refresh_cache=refresh)(*args, return_state=True)
    value = state.result()  # raises the step's exception when it failed
    if state.name == "Cached":
        _log(f"{step.name}: Cached (key {(value or {}).get('key', '-')[:12]}), reused")
    return value, state.name == "Cached"


# ---- flows ------------------------------------------------------------------------------------------
@flow(name="prune-and-evaluate", persist_result=True, result_serializer="json")
def prune_and_evaluate(config: RunConfig) -> Step | State:
    """Database check -> calibration -> coarse scores -> allocation -> fine step -> checkpoint -> tasks -> recorded
    results."""
    if config.record:
        check_database(config.database_url)
    identity = identify_model(config)
    done: dict[str, Step | None] = {}
    reused: dict[str, bool] = {}
    if not config.dense:
        done["scores"], reused["scores"] = _cached(coarse_scores, config.refresh, config, identity)
        done["allocation"], reused["allocation"] = _cached(allocation, config.refresh, config, identity, done["scores"])
        done["checkpoint"], reused["checkpoint"] = _cached(
            fine_step, config.refresh, config, identity, done["allocation"], done["scores"]
        )
    request = steps.request_for(config, identity, done.get("checkpoint"))
    evaluations = []
    for name in identity["tasks"]:
        evaluation, reused[f"task:{name}"] = _cached(evaluate, config.refresh, request, name)
        evaluations.append(evaluation)
    output = str(config.output_dir())
    results_path = write_results(request, identity["tasks"], evaluations, output, config.save_model, config.overwrite)
    recorded = record_results(results_path, config.database_url) if config.record else {}
    summary = _summary(config, results_path, recorded.get("run_id"), reused)
    _artifact(summary)
    if "error" in recorded:
        return Failed(message=recorded["error"])
    return summary


@flow(name="evaluate", persist_result=True, result_serializer="json")
def evaluate_model(
    request: EvalRequest, tasks: list[str], output: str, refresh: bool = False, overwrite: bool = False
) -> str:
    """Tasks on a dense model or a pruned checkpoint (the same cached evaluations as prune-and-evaluate)."""
    request = identify_evaluated(request)
    evaluations = [_cached(evaluate, refresh, request, name)[0] for name in tasks]
    return write_results(request, tasks, evaluations, output, False, overwrite)


def _summary(config: RunConfig, results_path: str, run_id: int | None, reused: dict[str, bool]) -> Step:
    document = read_json(results_path)
    block = document["ecoflap"]
    return {
        "run_name": config.run_name(),
        "run_key": block["run_key"],
        "run_id": run_id,
        "results": results_path,
        "dense": config.dense,
        "model": config.model,
        "pruner": block["pruner"],
        "target_sparsity": block["target_sparsity"],
        "measured_sparsity": block["measured_sparsity"],
        "reused": reused,
        "metrics": metric_rows(document),
    }


def metric_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """``results`` as rows: task, metric, value, stderr (lm-eval's ``"<metric>,<filter>"`` keys)."""
    rows = []
    for name, metrics in document.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, flt = key.partition(",")
            if not flt or metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr,{flt}")
            rows.append({"task": name, "metric": metric, "value": value, "stderr": stderr})
    return rows


def artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:100] or "ecoflap"


def _artifact(summary: Step) -> None:
    sparsity = "dense" if summary["dense"] else f"{summary['pruner']} at {summary['target_sparsity']}"
    create_table_artifact(
        table=summary["metrics"] or [{"task": "-", "metric": "-", "value": None, "stderr": None}],
        key=artifact_key(f"ecoflap-{summary['run_name']}"),
        description=f"**{summary['model']}**, {sparsity} (measured {summary['measured_sparsity']:.4f}); "
        f"run key `{summary['run_key'][:12]}`; results `{summary['results']}`",
    )


@task(name="run", cache_policy=NO_CACHE, task_run_name="run-{name}")
def run_one(config: RunConfig, name: str, slots: str) -> Step:
    """One point of a sweep as a child flow run (waits for a free slot of the sweep)."""
    with _SLOTS[slots]:
        state = prune_and_evaluate.with_options(flow_run_name=name)(config, return_state=True)
    if not state.is_completed():
        return {"run_name": name, "failed": state.message or state.name}
    return state.result()


@flow(name="sweep")
def sweep(config: SweepConfig, timeout_s: float | None = None) -> list[Step] | State:
    """Every grid point (and one dense run per model) as child flow runs, here or on the workers of
    ``config.deployment``, ``config.parallel`` at a time; a table of all of them. ``timeout_s``: how long
    to wait for the deployment's runs (None: as long as they take)."""
    runs = placed_runs(config)
    names = [run.run_name(config.with_seed()) for run in runs]
    for url in dict.fromkeys(run.database_url for run in runs if run.record):
        check_database(url)
    progress = ChildrenProgress(len(runs))
    if config.deployment:
        summaries = through_deployment(config.deployment, runs, names, config.parallel, timeout_s, progress)
    else:
        summaries = _in_this_process(runs, names, config.parallel, progress)
    _sweep_artifact(summaries)
    failed = [s for s in summaries if "failed" in s]
    if failed:
        listed = "; ".join(f"{s['run_name']}: {s['failed']}" for s in failed[:3])
        return Failed(message=f"{len(failed)} of {len(summaries)} runs failed ({listed})")
    return summaries


def placed_runs(config: SweepConfig) -> list[RunConfig]:
    """The sweep's runs with absolute output folders, so a run's results land where the caller said
    wherever it executes (a worker starts in its own working folder)."""
    return [
        run.model_copy(update={"output": str(run.output_dir(config.root(), config.with_seed()).expanduser().resolve())})
        for run in config.runs()
    ]


class ChildrenProgress:
    """The sweep's progress artifact: runs finished of the total."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.artifact = create_progress_artifact(0.0, description=f"sweep: 0/{total} runs done")

    def update(self, done: int) -> None:
        update_progress_artifact(
            self.artifact, 100.0 * done / self.total, description=f"sweep: {done}/{self.total} runs done"
        )
        _log(f"sweep: {done}/{self.total} runs done")


def _in_this_process(runs: list[RunConfig], names: list[str], parallel: int, progress: ChildrenProgress) -> list[Step]:
    slots = str(uuid.uuid4())
    _SLOTS[slots] = threading.Semaphore(parallel)
    try:
        futures = [run_one.submit(run, name, slots) for run, name in zip(runs, names, strict=True)]
        for done, _ in enumerate(as_completed(futures), start=1):
            progress.update(done)
        return [future.result() for future in futures]
    finally:
        _SLOTS.pop(slots, None)


def _sweep_artifact(summaries: list[Step]) -> None:
    rows = []
    for summary in summaries:
        if "failed" in summary:
            rows.append({"run": summary["run_name"], "task": "-", "metric": "failed", "value": summary["failed"]})
            continue
        for metric in summary.get("metrics", []):
            rows.append({"run": summary["run_name"], "sparsity": summary.get("measured_sparsity")} | metric)
    create_table_artifact(table=rows or [{"run": "-"}], key="ecoflap-sweep", description="every run of the sweep")


def results_in_run_cache() -> Any:
    """Prefect persists the cached steps' results beside their artefacts, in the run cache.

    Set around the whole flow run: Prefect fixes a flow run's result store when the run starts. Workers
    of a deployment get the same through ``PREFECT_LOCAL_STORAGE_PATH`` (deployments/prefect.yaml).
    """
    return temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(steps.run_cache() / "prefect")})


def run_evaluation(
    request: EvalRequest, tasks: list[str], output: str, refresh: bool = False, overwrite: bool = False
) -> str:
    """The evaluate flow in this process; the path of results.json (a failure is one EcoflapError line)."""
    ensure_temporary_server()
    with results_in_run_cache():
        state = evaluate_model(request, tasks, output, refresh, overwrite, return_state=True)
    return _outcome(state)


def run_flow(target: RunConfig | SweepConfig, timeout_s: float | None = None) -> Step | list[Step]:
    """Run one flow in this process (a sweep waits ``timeout_s`` for a deployment's runs); a failed run becomes
    one EcoflapError line."""
    ensure_temporary_server()
    with results_in_run_cache():
        if isinstance(target, SweepConfig):
            state = sweep(target, timeout_s, return_state=True)
        else:
            state = prune_and_evaluate(target, return_state=True)
    return _outcome(state)


def _outcome(state: State) -> Any:
    """A finished flow's result; a user mistake raised inside it stays its own one line (EcoflapError)."""
    if state.is_completed():
        return state.result()
    try:
        state.result()
    except EcoflapError:
        raise
    except Exception:  # noqa: BLE001 - any other failure: the state's message, one line
        pass
    raise EcoflapError(state.message or f"the flow ended in state {state.name}")
