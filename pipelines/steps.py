"""The steps of the job as the Prefect tasks see them: each calls one function of ``ecoflap.core.job`` (or the
evaluation runner), writes its artefact under its key in the run cache, and returns a small dict (key,
path), never a model.

Keys are sha256 over what each step depends on (model name and weights hash, calibration, scorer,
allocator, pruner, task and evaluation settings); they are the cache keys of the Prefect tasks in
``pipelines/flows.py``, whose persisted results are the one cache of prune, run and eval. Artefacts
are written atomically, so a killed step leaves nothing half-written and is simply computed again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ecoflap.core import job
from ecoflap.core.allocation import Allocation
from ecoflap.core.cache import cache_dir
from ecoflap.core.devices import measure_step
from ecoflap.core.errors import EcoflapError
from ecoflap.core.outputs import check_output, check_writable, is_run_folder, mark, staged_folder
from ecoflap.core.plugins import Registries
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.provenance import cache_key, fingerprint, read_json, weights_hash, write_json
from ecoflap.core.record import allocation_rows, method_key, results_block
from ecoflap.core.tasks import TaskOptions
from ecoflap.evaluation.runner import evaluate, merge_documents
from ecoflap.evaluation.tasks.base import check_args
from ecoflap.pipelines.run_config import EvalRequest, RunConfig

Log = Callable[[str], Any]
Step = dict[str, Any]
RUN_CACHE_ENV = "ECOFLAP_RUN_CACHE"


def run_cache() -> Path:
    """Where step artefacts and Prefect's persisted results live: $ECOFLAP_RUN_CACHE, else ``<cache>/runs``."""
    return Path(os.environ.get(RUN_CACHE_ENV) or cache_dir() / "runs")


def default_registries() -> Registries:
    """The plugins, loaded once per process (the same registries as the ``ecoflap`` commands)."""
    from ecoflap.pipelines.common import registries

    return registries(False)


# ---- keys ------------------------------------------------------------------------------------------
def _model(identity: Step) -> list[Any]:
    return [identity["model"], identity["weights_hash"], _implementation(identity, "model")]


def implementations(config: RunConfig, registries: Registries) -> dict[str, dict[str, str | None]]:
    """Who implements each named part of the run (plugin, distribution, version, class): in every cache key,
    so that two plugins' classes behind one name never share a cached step."""
    parts = {
        "model": job.resolve_model(registries, config.model).name,
        "pruner": config.pruner,
        "allocator": config.allocator,
    }
    allocator = registries.allocators.get(config.allocator)
    if allocator.needs_scores:
        parts["scorer"] = allocator.scorer or config.scorer
    found = {kind: registries.implementation(kind, name) for kind, name in parts.items()}
    if config.refine:  # a refinement (--refine) is registered as a pruner
        found["refine"] = registries.implementation("pruner", config.refine)
    return found


def scores_key(config: RunConfig, identity: Step) -> str:
    method = config.method()
    calibration = {k: method["calibration"][k] for k in ("corpus", "score_nsamples", "score_seqlen", "seed")}
    layers = [config.targets, config.ignore, config.towers, config.dtype]
    scorer = [method["scorer"], config.scorer_options(), config.micro_batch, _implementation(identity, "scorer")]
    return cache_key("scores/v3", _model(identity), calibration, scorer, layers, *_device(config))


def allocation_key(config: RunConfig, identity: Step, scores: Step | None) -> str:
    upstream = scores["key"] if scores else cache_key(_model(identity), config.targets, config.ignore, config.towers)
    method = config.method()
    settings = {k: method[k] for k in ("allocator", "allocation_file", "granularity", "aggregation", "per_tower")}
    settings |= {k: method[k] for k in ("allocator_options",) if k in method}  # owl's lambda, dlp's alpha
    allocator = _implementation(identity, "allocator")
    return cache_key("allocation/v3", upstream, settings, config.target, config.cap, allocator)


def checkpoint_key(config: RunConfig, identity: Step, allocated: Step) -> str:
    method = config.method()
    pruner = [method["pruner"], method["pruner_options"], method["nm"], config.micro_batch]
    implementation = _implementation(identity, "pruner")
    if config.refine:  # keys without --refine stay those of before it
        pruner.append(_implementation(identity, "refine"))
    return cache_key(
        "checkpoint/v3", allocated["key"], _model(identity), pruner, implementation, method["calibration"],
        *_device(config),
    )  # fmt: skip


def _device(config: Any) -> list[str]:
    """A key's device part: empty on the CPU (keys as before devices existed), else the device's type: numbers
    computed on a GPU round differently, so they never share a cached step with the CPU's."""
    device = config.device_identity()
    return [device] if device else []


def eval_key(request: EvalRequest, task: str, registries: Registries) -> str:
    task_cls = registries.tasks.get(task)
    implementation = {
        "task": registries.implementation("task", task),
        "model": registries.implementation("model", job.resolve_model(registries, request.model).name),
    }
    settings = request.evaluation()
    return cache_key(
        "eval/v3", request.identity(), task, task_cls.version, implementation, settings, *_device(eval_config(request))
    )


def _implementation(identity: Step, kind: str) -> dict[str, str | None] | None:
    return identity["implementations"].get(kind)


# ---- the job's steps ---------------------------------------------------------------------------------
def identify(config: RunConfig, registries: Registries, log: Log = print) -> Step:
    """Load the dense model once: its weights hash and prunable layers, saved for the later steps."""
    start = time.perf_counter()
    cpu = config.model_copy(update={"device": "cpu"})  # hashed on the CPU; blocks kept on disk are read one at a time
    adapter = job.load_model(registries, cpu, offload=True)
    identity = job.identify(adapter, config) | {"implementations": implementations(config, registries)}
    key = cache_key("layers/v3", _model(identity), config.targets, config.ignore, config.towers)
    path = write_json(run_cache() / "layers" / f"{key}.json", identity)
    log(f"model {config.model}: weights sha256 {identity['weights_hash'][:12]} ({time.perf_counter() - start:.1f} s)")
    step = {k: identity[k] for k in ("model", "model_id", "weights_hash", "implementations")}
    step |= {"layers_path": str(path)}
    return step | {"tasks": resolve_tasks(config.tasks, adapter, registries)}


AUTO_TASKS = ("vqa", "wikitext")  # "auto": the first of these that the model can do


def resolve_tasks(tasks: Sequence[str], adapter: Any, registries: Registries) -> list[str]:
    """The task names with ``auto`` replaced by the model's own measure (VQA, else WikiText perplexity)."""
    own = [n for n in AUTO_TASKS if n in registries.tasks and registries.tasks.get(n).skip_reason(adapter) is None]
    resolved = [t for name in tasks for t in ((own[:1]) if name == "auto" else [name])]
    return list(dict.fromkeys(resolved))


def coarse_scores(
    config: RunConfig, identity: Step, registries: Registries, log: Log = print, progress: ProgressFactory = no_progress
) -> Step | None:
    """COARSE: one score per prunable tensor; None when the allocator needs no scores."""
    methods = job.resolve_methods(registries, config)
    if methods.scorer is None:
        return None
    key = scores_key(config, identity)
    calibration = f"{config.score_nsamples} x {config.score_seqlen}"
    log(f"coarse scores: computing {key[:12]} ({config.coarse_scorer}, {calibration})")
    coarse = job.coarse_scores(job.load_model(registries, config, offload=True), config, methods, progress)
    path = write_json(run_cache() / "scores" / f"{key}.json", coarse | {"key": key})
    log(f"coarse scores: {len(coarse['scores'])} tensors in {coarse['seconds']:.1f} s -> {path}")
    return {"key": key, "path": str(path)}


def allocation_step(
    config: RunConfig, identity: Step, scores: Step | None, registries: Registries, log: Log = print
) -> Step:
    """The sparsity per layer from the scores (or none)."""
    key = allocation_key(config, identity, scores)
    layers = read_json(identity["layers_path"])["layers"]
    values = read_json(scores["path"])["scores"] if scores else None
    allocated = job.allocation(layers, config, job.resolve_methods(registries, config), values)
    path = write_json(run_cache() / "allocations" / f"{key}.json", allocated.to_dict())
    log(f"allocation: {allocated.method or config.allocator}, {len(allocated.sparsity)} layers -> {path}")
    return {"key": key, "path": str(path)}


def fine_step(
    config: RunConfig,
    identity: Step,
    allocated: Step,
    scores: Step | None,
    registries: Registries,
    log: Log = print,
    progress: ProgressFactory = no_progress,
) -> Step:
    """FINE: prune the dense model to the allocation; the checkpoint folder is written atomically."""
    key = checkpoint_key(config, identity, allocated)
    log(f"fine step: pruning {config.model} with {config.pruner} ({config.nsamples} x {config.seqlen}) -> {key[:12]}")
    adapter = job.load_model(registries, config, offload=True)
    result = job.fine_step(
        adapter, config, job.resolve_methods(registries, config), Allocation(**read_json(allocated["path"])), progress
    )
    coarse = read_json(scores["path"]) if scores else None
    dense = read_json(identity["layers_path"])  # the dense model's identity and prunable layers
    folder = job.save_checkpoint(
        adapter, result, job.report(config, dense, result, coarse), run_cache() / "checkpoints" / key
    )
    log(f"fine step: measured sparsity {result.measured.overall():.4f} in {result.timings['fine']:.1f} s -> {folder}")
    return {"key": key, "path": str(folder)}


def evaluate_task(
    request: EvalRequest, task: str, registries: Registries, log: Log = print, progress: ProgressFactory = no_progress
) -> Step:
    """One task on the model of ``request``; its results document is saved under its key."""
    key = eval_key(request, task, registries)
    config = eval_config(request)
    adapter = job.load_model(registries, config, request.checkpoint)
    options = TaskOptions(request.data_path(), request.limit, request.seed, dict(request.task_args), progress)
    with measure_step(adapter.device) as step:
        document = evaluate(adapter, [task], options, registries, log=log)
    saved = {"document": document, "seconds": step.seconds, "peak_memory_mb": step.peak_mb, "step": step.to_dict()}
    path = write_json(run_cache() / "evals" / f"{key}.json", saved)
    log(f"task {task}: evaluated in {step.seconds:.1f} s -> {path}")
    return {"key": key, "path": str(path)}


# ---- the results document ----------------------------------------------------------------------------
def assemble(request: EvalRequest, tasks: Sequence[str], evaluations: Sequence[Step]) -> dict[str, Any]:
    """The run's results document: the tasks' documents merged, under the one ``ecoflap`` block."""
    saved = [read_json(e["path"]) for e in evaluations]
    document = merge_documents([s["document"] for s in saved])
    report = request.report()
    timings = dict(report.get("timings_s", {})) if report else {}
    peaks = [s.get("peak_memory_mb") for s in saved] + [report.get("peak_memory_mb") if report else None]
    document["config"] = document.get("config", {}) | {"model": request.model, "checkpoint": request.checkpoint}
    document["ecoflap"] = results_block(
        model=request.model,
        model_hash=request.model_hash,
        checkpoint=request.checkpoint,
        report=report,
        allocation=_allocation(request, report),
        tasks=tasks,
        evaluation=request.evaluation(),
        timings=timings | {"eval": sum(s["seconds"] for s in saved)},
        peak_memory_mb=max((p for p in peaks if p is not None), default=None),
        steps=(report.get("steps", {}) if report else {}) | _eval_step(saved),
    )
    return document


def _eval_step(saved: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation as one step: its tasks' seconds summed, their peaks the highest."""
    steps = [s["step"] for s in saved if "step" in s]
    if not steps:
        return {}
    devices = [s["peak_device_mb"] for s in steps if s["peak_device_mb"] is not None]
    return {"eval": steps[0] | {
        "seconds": sum(s["seconds"] for s in steps),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
        "peak_device_mb": max(devices, default=None),
        "peak_rss_scope": "step" if all(s["peak_rss_scope"] == "step" for s in steps) else "process",
    }}  # fmt: skip


def eval_config(request: EvalRequest) -> job.PruneConfig:
    """How an evaluation loads its model: on the request's device, in its precision."""
    return job.PruneConfig.build(model=request.model, seed=request.seed, device=request.device, dtype=request.dtype)


def _allocation(request: EvalRequest, report: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not report:
        return []
    return allocation_rows(report["layers"], report["allocation"], report["measured_per_layer"])


def request_for(config: RunConfig, identity: Step, checkpoint: Step | None) -> EvalRequest:
    """What the evaluation of one run sees: the dense model or its pruned checkpoint."""
    report = read_json(Path(checkpoint["path"]) / "report.json") if checkpoint else None
    return EvalRequest(
        model=config.model,
        checkpoint=checkpoint["path"] if checkpoint else None,
        model_hash=identity["weights_hash"],
        method_key=method_key(report["method"]) if report else None,
        limit=config.limit,
        seed=config.eval_seed,
        task_args=dict(config.task_args),
        device=config.device,
        dtype=config.dtype,
    )


def identify_request(request: EvalRequest, registries: Registries, log: Log = print) -> EvalRequest:
    """Fill in the evaluated model's identity: from the checkpoint's report, else by hashing its weights."""
    request = request.model_copy(update={"data_fingerprint": fingerprint(request.data_dir)})  # hashed once
    report = request.report()
    if report and report.get("model_hash"):
        return request.model_copy(
            update={"model_hash": report["model_hash"], "method_key": method_key(report["method"])}
        )
    config = job.PruneConfig.build(model=request.model, seed=request.seed)
    digest = weights_hash(job.load_model(registries, config, request.checkpoint).model)
    log(f"model {request.checkpoint or request.model}: weights sha256 {digest[:12]}")
    return request.model_copy(update={"model_hash": digest, "method_key": None})


def output_is_checkpoint(output: Path, checkpoint: str | None) -> bool:
    """An evaluation written into its checkpoint's own folder adds results.json there, replacing nothing else."""
    return checkpoint is not None and output.expanduser().resolve() == Path(checkpoint).expanduser().resolve()


def check_results_folder(output: Path, checkpoint: str | None, overwrite: bool = False) -> None:
    """Where the results go may be written: a run folder (replaced whole), or the checkpoint's own folder, where
    only a ``results.json`` of ecoflap's (or, with ``overwrite``, any) is replaced."""
    if not output_is_checkpoint(output, checkpoint):
        check_output(output, overwrite)
        return
    results = output / "results.json"
    if (results.exists() or results.is_symlink()) and not (overwrite or is_run_folder(output)):
        raise EcoflapError(
            f"{results} exists and is not ecoflap's: choose another -o, or add --overwrite to replace that file"
        )
    check_writable(output, f"the results in {output}")


def write_run_folder(
    document: dict[str, Any], output: Path, checkpoint: str | None, save_model: bool, overwrite: bool = False
) -> Path:
    """The run folder: ``results.json``, the marker, and the pruned model, copied (``save_model``) or linked as
    ``checkpoint`` to the run cache; staged and renamed into place. An evaluation into its checkpoint's own
    folder adds ``results.json`` there (and no marker). Checked again here: the folder may have changed
    during the compute."""
    check_results_folder(output, checkpoint, overwrite)
    if output_is_checkpoint(output, checkpoint):
        write_json(output / "results.json", document)
        return (output / "results.json").resolve()
    with staged_folder(output) as staging:
        if checkpoint is not None and save_model:
            shutil.copytree(checkpoint, staging, dirs_exist_ok=True)
        elif checkpoint is not None:
            (staging / "checkpoint").symlink_to(Path(checkpoint).resolve(), target_is_directory=True)
        write_json(staging / "results.json", document)
        mark(staging)
    return (output / "results.json").resolve()


def record(document: dict[str, Any], url: str | None, artefacts: dict[str, str] | None = None) -> int:
    """One transaction in the results database; raises StoreUnavailable when it cannot be reached."""
    from ecoflap.evaluation.results.store import ResultsStore

    store = ResultsStore(url)
    try:
        return store.record(document, artefacts)
    finally:
        store.close()


def preflight(config: RunConfig, registries: Registries, output: Path | None = None) -> None:
    """Everything a run needs that can be checked before any model loads: names, the output folder, the run cache."""
    check_names(config, registries)
    check_output(output or config.output_dir(), config.overwrite)
    check_writable(run_cache(), f"the run cache {run_cache()} (set ${RUN_CACHE_ENV})")


def check_names(config: RunConfig, registries: Registries) -> None:
    """Plugin, model and task names, and the task arguments: fail before any model is loaded."""
    job.resolve_methods(registries, config)
    job.resolve_model(registries, config.model)
    for task in config.tasks:
        if task != "auto":
            registries.tasks.get(task)
    check_args(TaskOptions(None, config.limit, config.eval_seed, dict(config.task_args)))
