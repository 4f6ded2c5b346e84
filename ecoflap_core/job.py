"""The ECoFLaP job as one sequence of steps: resolve model -> calibration -> coarse scores -> allocation ->
fine step -> checkpoint -> report.

Each step is one function over the validated :class:`PruneConfig` and plain values (names, scores,
sparsities, paths), so the Prefect tasks of ``pipelines/flows.py`` wrap them one to one and cache
their results; ``ecoflap prune``, ``ecoflap run``, ``ecoflap eval`` and the benchmarks all go through
those tasks. The checkpoint folder holds the pruned model, ``allocation.json`` and ``report.json``
(the one report schema).
"""

from __future__ import annotations

import difflib
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.allocation import Allocation, LayerInfo
from ecoflap.core.compress import Methods, PruneResult, allocate, layer_infos, prune_fine, select_towers
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets.corpora import load_corpus, split_corpus
from ecoflap.core.devices import describe_device, measure_step, to_device
from ecoflap.core.errors import EcoflapError
from ecoflap.core.outputs import staged_folder
from ecoflap.core.plugins import Registries
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.provenance import versions, weights_hash, write_json
from ecoflap.core.pruning import LayerPruner, MaskRefiner

Log = Callable[[str], Any]
REPORT_VERSION = "ecoflap-report/v2"
IMAGE_TEXT_SOURCES = ("easy-vqa",)
_LOAD_LOCK = threading.Lock()  # loaders seed torch's global generator: one load at a time per process


# ---- resolve model -----------------------------------------------------------------------------------
def resolve_model(registries: Registries, source: str) -> ModelSpec:
    """A registered model name, or a local folder that some adapter recognises."""
    if source in registries.models:
        return registries.models.get(source)
    path = Path(source).expanduser()
    if path.exists():
        for entry in registries.models.entries():
            if entry.obj.matches is not None and entry.obj.matches(path):
                return entry.obj
        raise EcoflapError(f"no model adapter recognises the folder {path} (is config.json there?)")
    raise EcoflapError(
        f"model {source!r} is neither a registered model nor an existing folder."
        + registries.models.suggestions(source)
    )


def load_model(
    registries: Registries, config: PruneConfig, source: str | None = None, offload: bool = False
) -> ModelAdapter:
    """The model of ``config`` (or the folder ``source``), loaded under a process-wide lock and seed, on
    ``config.device`` (``offload``: with its blocks on the CPU as ``config.offload`` says)."""
    model = source or config.model
    spec = resolve_model(registries, model)
    device = config.execution_device  # a device this machine lacks fails here, before the weights are read
    offload_to = config.offload if offload else "none"
    extra = {"seed": config.seed} | ({"offload": "disk"} if offload_to == "disk" else {})
    with _LOAD_LOCK:
        torch.manual_seed(config.seed)
        adapter = spec.load(LoadOptions(model, config.targets, config.ignore, config.dtype, extra))
    adapter.place(device, offload_to)
    return adapter


def resolve_methods(registries: Registries, config: PruneConfig) -> Methods:
    """Plugin names -> instances, failing early (before any model is loaded) on unknown names."""
    allocator_cls = registries.allocators.get(config.allocator)
    pruner = registries.pruners.get(config.pruner)
    scorer = None
    if allocator_cls.needs_scores:  # owl and dlp name the scorer of their own statistics
        scorer = registries.scorers.get(allocator_cls.scorer or config.scorer)(
            eps=config.zo_eps,
            num_noise=config.zo_noise,
            seed=config.seed,
            micro_batch=config.micro_batch,
            group_size=config.zo_group,
            level=config.zo_level,
            difference=config.zo_difference,
            head=config.zo_head,
            variant=config.zo_variant if config.scorer == "zeroth-order" else config.fo_variant,
            **config.statistic_options(),
        )
    options = config.allocator_options() | ({"path": config.allocation_file} if config.allocator == "from-file" else {})
    if scorer is not None and config.offload != "none" and scorer.name == "first-order":
        raise EcoflapError(
            "--offload applies to forward passes: first-order scoring needs the whole model on --device "
            "(use --scorer zeroth-order, or --offload none)"
        )
    if config.pattern and allocator_cls.needs_scores:
        raise EcoflapError(f"N:M sparsity ({config.nm}) is the same in every layer: use --allocator uniform")
    return Methods(scorer, allocator_cls(**options), pruner, resolve_refiner(registries, config, pruner))


def resolve_refiner(registries: Registries, config: PruneConfig, pruner: type[LayerPruner]) -> type[MaskRefiner] | None:
    """``--refine``: a registered refinement, after a pruner whose mask it may change (checked before any model
    loads)."""
    refinements = {n: cls for n in registries.pruners if issubclass(cls := registries.pruners.get(n), MaskRefiner)}
    if issubclass(pruner, MaskRefiner):
        raise EcoflapError(
            f"{config.pruner} refines another pruner's mask: use --pruner wanda --refine {config.pruner}"
        )
    if config.refine is None:
        return None
    if config.refine not in refinements:
        close = difflib.get_close_matches(config.refine, refinements, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise EcoflapError(
            f"--refine {config.refine!r} is not a refinement of a pruner's mask.{hint} Available: "
            + (", ".join(refinements) or "(none)")
        )
    if not pruner.mask_only:
        raise EcoflapError(
            f"--refine {config.refine} changes a mask and needs a pruner that only zeroes weights: "
            f"{config.pruner} also changes the weights it keeps (use wanda, ria or magnitude)"
        )
    return refinements[config.refine]


def identify(adapter: ModelAdapter, config: PruneConfig) -> dict[str, Any]:
    """The dense model's identity (name, weights hash) and its prunable layers (for the allocation); settings
    the loaded model cannot honour fail here, before any compute."""
    if config.zo_head == "linear" and config.coarse_scorer == "zeroth-order" and not adapter.splits_loss():
        raise EcoflapError(f"--zo-head linear: {config.model}'s scoring loss has no separate head: use --zo-head full")
    layers = [vars(info) for info in layer_infos(select_towers(adapter.towers(), config.towers))]
    return {
        "model": config.model,
        "model_id": adapter.model_id,
        "weights_hash": weights_hash(adapter.model, adapter.stored_tensor),
        "describe": adapter.describe(),
        "layers": layers,
    }


# ---- calibration -------------------------------------------------------------------------------------
def calibration_data(adapter: ModelAdapter, corpus: str) -> list[Any]:
    """Texts for language models; (image, caption) pairs for image-text models (easy-vqa's training set)."""
    if getattr(adapter, "calibration_data", "text") == "text":
        return split_corpus(load_corpus(corpus))[0]
    source = "easy-vqa" if corpus == "wikipedia" else corpus
    if source not in IMAGE_TEXT_SOURCES:
        raise EcoflapError(
            f"{adapter.model_id} calibrates on image-caption pairs: "
            f"--corpus must be one of {', '.join(IMAGE_TEXT_SOURCES)}"
        )
    from ecoflap.core.datasets.easy_vqa import image_caption_pairs

    return image_caption_pairs("train")


def calibration_batch(adapter: ModelAdapter, config: PruneConfig, nsamples: int, seqlen: int) -> Batch:
    """``nsamples`` seeded calibration samples of ``seqlen`` tokens from the configured corpus, on the model's
    device (drawn on the CPU, so every device sees the same samples)."""
    batch = adapter.calibration_batch(calibration_data(adapter, config.corpus), nsamples, seqlen, config.seed)
    return to_device(batch, adapter.device)


# ---- coarse -> allocation -> fine --------------------------------------------------------------------
def coarse_scores(
    adapter: ModelAdapter, config: PruneConfig, methods: Methods, progress: ProgressFactory = no_progress
) -> dict[str, Any]:
    """COARSE: one score per prunable tensor, on the coarse step's own calibration set."""
    with measure_step(adapter.device) as step:
        batch = calibration_batch(adapter, config, config.score_nsamples, config.score_seqlen)
        scores = methods.scorer.score(adapter, select_towers(adapter.towers(), config.towers), batch, progress)
    return {"scores": scores, "seconds": step.seconds, "peak_memory_mb": step.peak_mb, "step": step.to_dict()}


def allocation(
    layers: list[dict[str, Any]], config: PruneConfig, methods: Methods, scores: dict[str, float] | None
) -> Allocation:
    """The sparsity per layer for the global target, with the cap per group."""
    if methods.allocator.needs_scores and scores is None:
        raise EcoflapError(f"the {methods.allocator.name} allocator needs a --scorer")
    return allocate([LayerInfo(**info) for info in layers], config, methods.allocator, scores)


def fine_step(
    adapter: ModelAdapter,
    config: PruneConfig,
    methods: Methods,
    sparsity: Allocation,
    progress: ProgressFactory = no_progress,
) -> PruneResult:
    """FINE: prune ``adapter.model`` in place to the allocation, block by block (inputs replayed)."""
    towers = select_towers(adapter.towers(), config.towers)
    with measure_step(adapter.device) as step:
        batch = calibration_batch(adapter, config, config.nsamples, config.seqlen)
        measured = prune_fine(
            adapter, towers, config, methods.pruner, batch, sparsity.sparsity, progress, methods.refiner
        )
    return PruneResult(
        sparsity, measured, timings={"fine": step.seconds}, layers=layer_infos(towers), steps={"fine": step.to_dict()}
    )


# ---- checkpoint and report ---------------------------------------------------------------------------
def report(
    config: PruneConfig, identity: dict[str, Any], result: PruneResult, coarse: dict[str, Any] | None
) -> dict[str, Any]:
    """The one report schema of a pruned checkpoint (``report.json``)."""
    timings = ({"coarse": coarse["seconds"]} if coarse else {}) | result.timings
    steps = ({"coarse": coarse["step"]} if coarse and "step" in coarse else {}) | result.steps
    peaks = [s["peak_device_mb"] if s.get("peak_device_mb") is not None else s["peak_rss_mb"] for s in steps.values()]
    device = config.execution_device
    return result.summary() | {
        "version": REPORT_VERSION,
        # the device resolved: the report's config means the same on any machine that reads it
        "config": config.model_dump(include=set(PruneConfig.model_fields)) | {"device": str(device)},
        "device": describe_device(device),
        "steps": steps,
        "method": config.method(),
        "model": identity["describe"],
        "model_hash": identity["weights_hash"],
        "implementations": identity.get("implementations"),
        "layers": identity["layers"],
        "scores": coarse["scores"] if coarse else None,
        "allocation": result.allocation.sparsity,
        "timings_s": timings,
        "peak_memory_mb": max(peaks, default=None) or peak_memory_mb(),
        "versions": versions(),
    }


def save_checkpoint(adapter: ModelAdapter, result: PruneResult, report_: dict[str, Any], folder: Path) -> Path:
    """The pruned model (Hugging Face layout), ``allocation.json`` and ``report.json``, written atomically."""
    with staged_folder(folder) as staging:
        adapter.save(staging)
        result.allocation.save(staging / "allocation.json")
        write_json(staging / "report.json", report_)
    return folder


def peak_memory_mb() -> float:
    """Peak accelerator memory if one is in use, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
