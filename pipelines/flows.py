"""Prefect flows: ``prune_and_evaluate`` (one run) and ``sweep`` (a grid of runs, the dense baseline once per model).

Each Prefect task calls one function of :mod:`ecoflap.pipelines.steps` and passes keys, paths and small values;
the steps cache their results on disk, so a repeated or crashed run resumes where it stopped. With no
``PREFECT_API_URL`` the flows run against Prefect's ephemeral API (SQLite); with one, against that server.
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from ecoflap.core.errors import EcoflapError
from ecoflap.pipelines import steps
from ecoflap.pipelines.run_config import RunConfig, SweepConfig

Step = dict[str, Any]
_SLOTS: dict[str, threading.Semaphore] = {}  # sweep id -> how many of its runs may work at once


class LoggedProgress:
    """A progress bar that logs each quarter of the way (Prefect's logs, not a terminal bar)."""

    def __init__(self, *, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self.logged = max(total, 1), desc, 0, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        quarter = 4 * self.done // self.total
        if quarter > self.logged:
            self.logged = quarter
            get_run_logger().info(f"{self.desc}: {self.done}/{self.total}")

    def close(self) -> None:
        return None


def _log(message: str) -> None:
    get_run_logger().info(message)


def _registries() -> Any:
    return steps.default_registries()


# ---- tasks: one step each ---------------------------------------------------------------------------
@task(name="identify-model", cache_policy=NO_CACHE)
def identify_model(config: RunConfig) -> Step:
    return steps.identify(config, _registries(), _log)


@task(name="coarse-scores", cache_policy=NO_CACHE)
def coarse_scores(config: RunConfig, identity: Step) -> Step | None:
    return steps.coarse_scores(config, identity, _registries(), _log, LoggedProgress)


@task(name="allocation", cache_policy=NO_CACHE)
def allocation(config: RunConfig, identity: Step, scores: Step | None) -> Step:
    return steps.allocation_step(config, identity, scores, _registries(), _log)


@task(name="fine-step", cache_policy=NO_CACHE)
def fine_step(config: RunConfig, allocated: Step) -> Step:
    return steps.fine_step(config, allocated, _registries(), _log, LoggedProgress)


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{name}")
def evaluate(config: RunConfig, model_key: str, checkpoint: str | None, name: str) -> Step:
    return steps.evaluate_step(config, model_key, checkpoint, name, _registries(), _log)


@task(name="write-results", cache_policy=NO_CACHE)
def write_results(config: RunConfig, identity: Step, done: dict[str, Step | None], evaluations: list[Step]) -> str:
    document = steps.assemble(config, identity, done, evaluations)
    checkpoint = done.get("checkpoint")
    return str(steps.write_document(document, config.output_dir(), checkpoint["path"] if checkpoint else None))


@task(name="record-results", cache_policy=NO_CACHE)
def record_results(results_path: str, database_url: str | None) -> Step:
    """The run's row in the results database: ``{"run_id": ...}``, or ``{"error": ...}`` when unreachable."""
    from ecoflap.evaluation.results.store import StoreUnavailable

    document = steps.read_json(results_path)
    try:
        return {"run_id": steps.record(document, database_url, artefacts={"results": results_path})}
    except StoreUnavailable as exc:
        message = f"results not recorded: {exc}; the results are kept in {results_path}"
        get_run_logger().warning(message)
        return {"error": message}


# ---- flows ------------------------------------------------------------------------------------------
@flow(name="prune-and-evaluate", persist_result=True, result_serializer="json")
def prune_and_evaluate(config: RunConfig) -> Step | State:
    """Calibration -> coarse scores -> allocation -> fine step -> checkpoint -> tasks -> recorded results."""
    identity = identify_model(config)
    done: dict[str, Step | None] = {}
    if not config.dense:
        done["scores"] = coarse_scores(config, identity)
        done["allocation"] = allocation(config, identity, done["scores"])
        done["checkpoint"] = fine_step(config, done["allocation"])
    checkpoint = done.get("checkpoint")
    model_key = checkpoint["key"] if checkpoint else steps.dense_key(identity)
    path = checkpoint["path"] if checkpoint else None
    evaluations = [evaluate(config, model_key, path, name) for name in config.tasks]
    results_path = write_results(config, identity, done, evaluations)
    recorded = record_results(results_path, config.database_url)
    summary = _summary(config, results_path, recorded.get("run_id"), done, evaluations)
    _artifact(summary)
    if "error" in recorded:
        return Failed(message=recorded["error"])
    return summary


def _summary(config: RunConfig, results_path: str, run_id: int | None, done: dict, evaluations: list) -> Step:
    document = steps.read_json(results_path)
    block = document["ecoflap"]
    reused = {name: step["reused"] for name, step in done.items() if step is not None}
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
        "reused": reused | {f"task:{n}": e["reused"] for n, e in zip(config.tasks, evaluations, strict=True)},
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
def sweep(config: SweepConfig) -> list[Step] | State:
    """Every grid point (and one dense run per model) as parallel flow runs; a table of all of them."""
    runs = [
        run.model_copy(update={"output": str(run.output_dir(config.root(), config.with_seed()))})
        for run in config.runs()
    ]
    names = [run.run_name(config.with_seed()) for run in runs]
    if config.deployment:
        summaries = _through_deployment(config.deployment, runs, names)
    else:
        slots = str(uuid.uuid4())
        _SLOTS[slots] = threading.Semaphore(config.parallel)
        try:
            futures = [run_one.submit(run, name, slots) for run, name in zip(runs, names, strict=True)]
            summaries = [future.result() for future in futures]
        finally:
            _SLOTS.pop(slots, None)
    _sweep_artifact(summaries)
    failed = [s for s in summaries if "failed" in s]
    if failed:
        first = f"{failed[0]['run_name']}: {failed[0]['failed']}"
        return Failed(message=f"{len(failed)} of {len(summaries)} runs failed (first: {first})")
    return summaries


def _through_deployment(deployment: str, runs: list[RunConfig], names: list[str]) -> list[Step]:
    """Fan out as flow runs of a deployment (picked up by workers), then wait for all of them."""
    from prefect.deployments import run_deployment
    from prefect.flow_runs import wait_for_flow_run

    started = [
        run_deployment(deployment, parameters={"config": run.model_dump()}, flow_run_name=name, timeout=0)
        for run, name in zip(runs, names, strict=True)
    ]
    summaries = []
    for flow_run, name in zip(started, names, strict=True):
        state = wait_for_flow_run(flow_run.id, timeout=None).state
        ok = state is not None and state.is_completed()
        summaries.append(state.result() if ok else {"run_name": name, "failed": state.message if state else "lost"})
    return summaries


def _sweep_artifact(summaries: list[Step]) -> None:
    rows = []
    for summary in summaries:
        if "failed" in summary:
            rows.append({"run": summary["run_name"], "task": "-", "metric": "failed", "value": summary["failed"]})
            continue
        for metric in summary.get("metrics", []):
            rows.append({"run": summary["run_name"], "sparsity": summary.get("measured_sparsity")} | metric)
    create_table_artifact(table=rows or [{"run": "-"}], key="ecoflap-sweep", description="every run of the sweep")


def run_flow(target: RunConfig | SweepConfig) -> Step | list[Step]:
    """Run one flow in this process; a failed run becomes one EcoflapError line."""
    chosen = sweep if isinstance(target, SweepConfig) else prune_and_evaluate
    state = chosen(target, return_state=True)
    if not state.is_completed():
        raise EcoflapError(state.message or f"the flow ended in state {state.name}")
    return state.result()
