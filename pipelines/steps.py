"""The steps of prune-and-evaluate, one function each, each result cached on disk under a content key.

calibration data -> coarse scores -> allocation -> fine step -> pruned checkpoint -> one evaluation per
task -> results document -> results database. Every step returns a small dict (a key, a path, whether
it reused a cached result, seconds), never a model, so the Prefect tasks in ``pipelines/flows.py`` pass
identifiers and paths only. Keys are sha256 over the model identity (name and weights hash), the
calibration settings, the scorer settings and the seed, plus what each later step adds; a repeated or
crashed run finds what was finished and computes only the rest. Files are written atomically, so a
killed step leaves no half-written result under its key.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.adapters import ModelAdapter
from ecoflap.core.allocation import Allocation, LayerInfo
from ecoflap.core.cache import cache_dir
from ecoflap.core.compress import PruneResult, allocate, layer_infos, prune_fine, select_towers
from ecoflap.core.plugins import Registries
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.pipelines.prune import calibration_data, load_model, resolve_methods, save_outputs, versions
from ecoflap.pipelines.run_config import RunConfig

Log = Callable[[str], Any]
Step = dict[str, Any]
RUN_CACHE_ENV = "ECOFLAP_RUN_CACHE"
_LOAD_LOCK = threading.Lock()  # loaders seed torch's global generator: one load at a time per process


# ---- keys and files --------------------------------------------------------------------------------
def run_cache() -> Path:
    """Where step results live: $ECOFLAP_RUN_CACHE, else ``<ecoflap cache>/runs``."""
    return Path(os.environ.get(RUN_CACHE_ENV) or cache_dir() / "runs")


def cache_key(*parts: Any) -> str:
    """sha256 over the JSON of ``parts`` (sorted keys): the same settings give the same key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _reused(kind: str, key: str, path: Path, log: Log) -> Step:
    log(f"{kind}: reused {key[:12]} from {path}")
    return {"key": key, "path": str(path), "reused": True}


def peak_memory_mb() -> float:
    """Peak accelerator memory if one is in use, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- model identity --------------------------------------------------------------------------------
def defaultregistries() -> Registries:
    """The plugins, loaded once per process (the same registries as the ``ecoflap`` commands)."""
    return registries(False)


def load(registries: Registries, config: RunConfig, source: str | None = None) -> ModelAdapter:
    """The model of ``config`` (or the checkpoint folder ``source``), loaded under a process-wide lock."""
    with _LOAD_LOCK:
        torch.manual_seed(config.seed)
        return load_model(registries, config if source is None else config.model_copy(update={"model": source}))


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def corpus_fingerprint(corpus: str) -> str:
    """A corpus name, or the sha256 of the corpus file (or folder of files) it names."""
    path = Path(corpus).expanduser()
    if not path.exists():
        return corpus
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + file.read_bytes())
    return f"{corpus}@{digest.hexdigest()}"


def identify(config: RunConfig, registries: Registries, log: Log = print) -> Step:
    """Load the dense model once: its weights hash and its prunable layers (for the allocation step)."""
    start = time.perf_counter()
    adapter = load(registries, config)
    identity = {"model": config.model, "weights_hash": weights_hash(adapter.model)}
    layers = [vars(info) for info in layer_infos(select_towers(adapter.towers(), config.towers))]
    key = cache_key("layers/v1", identity, config.targets, config.ignore, config.towers)
    path = run_cache() / "layers" / f"{key}.json"
    write_json(path, {"identity": identity, "model": adapter.describe(), "layers": layers})
    log(f"model {config.model}: weights sha256 {identity['weights_hash'][:12]} ({time.perf_counter() - start:.1f} s)")
    return identity | {"model_id": adapter.model_id, "layers_path": str(path)}


def _identity(identity: Step) -> dict[str, str]:
    return {"model": identity["model"], "weights_hash": identity["weights_hash"]}


def scores_key(config: RunConfig, identity: Step) -> str:
    calibration = [corpus_fingerprint(config.corpus), config.score_nsamples, config.score_seqlen]
    scorer = {
        "scorer": config.scorer,
        "zo": [config.zo_eps, config.zo_noise, config.zo_group, config.zo_level],
        "fo_variant": config.fo_variant,
        "micro_batch": config.micro_batch,
        "layers": [config.targets, config.ignore, config.towers],
    }
    return cache_key("scores/v1", _identity(identity), calibration, scorer, config.seed)


def allocation_key(config: RunConfig, identity: Step, scores: Step | None) -> str:
    layers = [config.targets, config.ignore, config.towers]
    upstream = scores["key"] if scores else cache_key(_identity(identity), *layers)
    source = corpus_fingerprint(config.allocation_file) if config.allocation_file else None
    settings = [config.allocator, source, config.target, config.cap, config.granularity]
    return cache_key("allocation/v1", upstream, settings, config.aggregation, config.per_tower)


def checkpoint_key(config: RunConfig, allocation: Step) -> str:
    calibration = [corpus_fingerprint(config.corpus), config.nsamples, config.seqlen, config.seed]
    pruner = [config.pruner, config.nm, config.comparison, config.micro_batch]
    return cache_key("checkpoint/v1", allocation["key"], pruner, calibration)


def dense_key(identity: Step) -> str:
    return cache_key("dense/v1", _identity(identity))


def eval_settings(config: RunConfig) -> dict[str, Any]:
    return {"limit": config.limit, "seed": config.eval_seed, "task_args": config.task_args}


def run_key(config: RunConfig, model_key: str) -> str:
    """The run's idempotent key: the evaluated model (checkpoint or dense) and the evaluation settings."""
    return cache_key("run/v1", model_key, sorted(config.tasks), eval_settings(config))


# ---- coarse -> allocation -> fine ------------------------------------------------------------------
def coarse_scores(
    config: RunConfig, identity: Step, registries: Registries, log: Log = print, progress: ProgressFactory = no_progress
) -> Step | None:
    """COARSE: one score per prunable tensor, saved as JSON; None when the allocator needs no scores."""
    scorer = resolve_methods(registries, config).scorer
    if scorer is None:
        return None
    key = scores_key(config, identity)
    path = run_cache() / "scores" / f"{key}.json"
    if path.exists():
        return _reused("coarse scores", key, path, log)
    log(f"coarse scores: computing {key[:12]} ({config.scorer}, {config.score_nsamples} x {config.score_seqlen})")
    adapter = load(registries, config)
    calibration, _ = calibration_data(adapter, config.corpus)
    batch = adapter.calibration_batch(calibration, config.score_nsamples, config.score_seqlen, config.seed)
    start = time.perf_counter()
    scores = scorer.score(adapter, select_towers(adapter.towers(), config.towers), batch, progress)
    seconds = time.perf_counter() - start
    write_json(path, {"key": key, "scores": scores, "seconds": seconds, "peak_memory_mb": peak_memory_mb()})
    log(f"coarse scores: {len(scores)} tensors in {seconds:.1f} s -> {path}")
    return {"key": key, "path": str(path), "reused": False}


def allocation_step(
    config: RunConfig, identity: Step, scores: Step | None, registries: Registries, log: Log = print
) -> Step:
    """The sparsity per layer from the scores (or none), saved as JSON."""
    key = allocation_key(config, identity, scores)
    path = run_cache() / "allocations" / f"{key}.json"
    if path.exists():
        return _reused("allocation", key, path, log)
    layers = [LayerInfo(**info) for info in read_json(identity["layers_path"])["layers"]]
    values = read_json(scores["path"])["scores"] if scores else None
    allocation = allocate(layers, config, resolve_methods(registries, config).allocator, values)
    write_json(path, allocation.to_dict())
    log(f"allocation: {allocation.method or config.allocator}, {len(allocation.sparsity)} layers -> {path}")
    return {"key": key, "path": str(path), "reused": False}


def fine_step(
    config: RunConfig,
    allocation: Step,
    registries: Registries,
    log: Log = print,
    progress: ProgressFactory = no_progress,
) -> Step:
    """FINE: prune the dense model to the allocation; the checkpoint folder is written atomically."""
    key = checkpoint_key(config, allocation)
    folder = run_cache() / "checkpoints" / key
    if (folder / "report.json").exists():
        return _reused("fine step", key, folder, log)
    log(f"fine step: pruning {config.model} with {config.pruner} ({config.nsamples} x {config.seqlen}) -> {key[:12]}")
    pruner = resolve_methods(registries, config).pruner
    sparsity = Allocation(**read_json(allocation["path"]))
    adapter = load(registries, config)
    calibration, _ = calibration_data(adapter, config.corpus)
    batch = adapter.calibration_batch(calibration, config.nsamples, config.seqlen, config.seed)
    start = time.perf_counter()
    towers = select_towers(adapter.towers(), config.towers)
    measured = prune_fine(adapter, towers, config, pruner, batch, sparsity.sparsity, progress)
    result = PruneResult(sparsity, measured, timings={"fine": time.perf_counter() - start}, layers=layer_infos(towers))
    report = result.summary() | {"config": config.model_dump(), "model": adapter.describe(), "versions": versions()}
    save_outputs(adapter, result, report | {"peak_memory_mb": peak_memory_mb()}, folder)
    log(f"fine step: measured sparsity {measured.overall():.4f} in {result.timings['fine']:.1f} s -> {folder}")
    return {"key": key, "path": str(folder), "reused": False}


# ---- evaluation and results ------------------------------------------------------------------------
def evaluate_step(
    config: RunConfig,
    model_key: str,
    checkpoint: str | None,
    task: str,
    registries: Registries,
    log: Log = print,
    evaluate_fn: Callable[..., dict[str, Any]] | None = None,
) -> Step:
    """One task on the checkpoint (or the dense model); its results document is saved under its key."""
    key = cache_key("eval/v1", model_key, task, eval_settings(config))
    path = run_cache() / "evals" / f"{key}.json"
    if path.exists():
        return _reused(f"task {task}", key, path, log)
    from ecoflap.core.tasks import TaskOptions

    if evaluate_fn is None:
        from ecoflap.evaluation.runner import evaluate as evaluate_fn
    adapter = load(registries, config, checkpoint)
    options = TaskOptions(limit=config.limit, seed=config.eval_seed, extra=dict(config.task_args))
    start = time.perf_counter()
    document = evaluate_fn(adapter, [task], options, registries, None, None)
    seconds = time.perf_counter() - start
    write_json(path, {"document": document, "seconds": seconds, "peak_memory_mb": peak_memory_mb()})
    log(f"task {task}: evaluated in {seconds:.1f} s -> {path}")
    return {"key": key, "path": str(path), "reused": False}


MERGED = ("results", "configs", "versions", "n-samples", "higher_is_better", "skipped")


def merge_documents(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One lm-eval-shaped document from one document per task (their per-task sections joined)."""
    merged: dict[str, Any] = {section: {} for section in MERGED}
    for document in documents:
        for section, value in document.items():
            if section in MERGED and isinstance(value, dict):
                merged[section] |= value
            elif section not in merged:
                merged[section] = value
    return merged


def assemble(
    config: RunConfig,
    identity: Step,
    steps: dict[str, Step | None],
    evaluations: list[Step],
) -> dict[str, Any]:
    """The run's results document: the tasks' documents merged, with the ``ecoflap`` block."""
    saved = [read_json(e["path"]) for e in evaluations]
    document = merge_documents([s["document"] for s in saved])
    checkpoint = steps.get("checkpoint")
    model_key = checkpoint["key"] if checkpoint else dense_key(identity)
    report = read_json(Path(checkpoint["path"]) / "report.json") if checkpoint else {}
    scores = read_json(steps["scores"]["path"]) if steps.get("scores") else {}
    timings = {"coarse": scores.get("seconds"), "fine": report.get("timings_s", {}).get("fine")}
    timings = {k: v for k, v in timings.items() if v is not None} | {"eval": sum(s["seconds"] for s in saved)}
    peaks = [s.get("peak_memory_mb") for s in [scores, report, *saved]]
    document["config"] = document.get("config", {}) | {
        "model": config.model,
        "checkpoint": checkpoint["path"] if checkpoint else None,
        "limit": config.limit,
        "seed": config.eval_seed,
    }
    document["ecoflap"] = {
        "run_key": run_key(config, model_key),
        "model": config.model,
        "model_hash": identity["weights_hash"],
        "checkpoint": checkpoint["path"] if checkpoint else None,
        "dense": config.dense,
        "pruner": None if config.dense else config.pruner,
        "scorer": None if config.dense or not scores else config.scorer,
        "allocator": None if config.dense else config.allocator,
        "target_sparsity": 0.0 if config.dense else config.target,
        "measured_sparsity": report.get("measured_sparsity", 0.0),
        "allocation": _allocation_rows(identity, checkpoint),
        "calibration": {"data": config.corpus, "nsamples": config.nsamples, "seqlen": config.seqlen},
        "seeds": {"calibration": config.seed, "perturbation": config.seed, "eval": config.eval_seed},
        "versions": versions(),
        "timings_s": timings,
        "peak_memory_mb": max((p for p in peaks if p is not None), default=None),
        "status": "complete",
        "artefacts": [{"kind": "checkpoint", "path": checkpoint["path"]}] if checkpoint else [],
    }
    return document


def _allocation_rows(identity: Step, checkpoint: Step | None) -> list[dict[str, Any]]:
    """One row per pruned layer: its target and measured sparsity and its size."""
    if not checkpoint:
        return []
    layers = read_json(identity["layers_path"])["layers"]
    folder = Path(checkpoint["path"])
    targets = read_json(folder / "allocation.json")["sparsity"]
    measured = read_json(folder / "report.json")["measured_per_layer"]
    return [
        {
            "layer": info["name"],
            "tower": info["tower"],
            "block": info["block"],
            "target": targets.get(info["name"]),
            "measured": measured.get(info["name"]),
            "params": info["size"],
        }
        for info in layers
        if info["name"] in targets
    ]


def write_document(
    document: dict[str, Any], output: Path, checkpoint: str | None = None, write_fn: Callable[..., Any] | None = None
) -> Path:
    """``output/results.json`` (atomic, through the evaluation runner) and a ``checkpoint`` link to the cache."""
    if write_fn is None:
        from ecoflap.evaluation.runner import write_results as write_fn
    output.mkdir(parents=True, exist_ok=True)
    write_fn(document, output)
    if checkpoint is not None:
        link = output / "checkpoint"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(checkpoint).resolve(), target_is_directory=True)
    return (output / "results.json").resolve()


def record(
    document: dict[str, Any],
    url: str | None,
    artefacts: dict[str, str] | None = None,
    store_factory: Callable[..., Any] | None = None,
) -> int:
    """One transaction in the results database; raises StoreUnavailable when it cannot be reached."""
    if store_factory is None:
        from ecoflap.evaluation.results.store import ResultsStore as store_factory
    store = store_factory(url)
    try:
        return store.record(document, artefacts)
    finally:
        store.close()


def check_names(config: RunConfig, registries: Registries) -> None:
    """Plugin, model and task names: fail before any model is loaded."""
    resolve_methods(registries, config)
    from ecoflap.pipelines.prune import resolve_model

    resolve_model(registries, config.model)
    for task in config.tasks:
        registries.tasks.get(task)
