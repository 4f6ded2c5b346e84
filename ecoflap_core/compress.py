"""The method end to end on a loaded model: COARSE scores -> allocation -> FINE layer-wise pruning."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecoflap.core.adapters import Batch, ModelAdapter, Tower
from ecoflap.core.allocation import Allocation, AllocationRequest, Allocator, LayerInfo
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.pruning import Comparison, LayerPruner, MaskRefiner
from ecoflap.core.scoring import Scorer
from ecoflap.core.sequential import LayerSparsity, prune_sequential


@dataclass
class Methods:
    """The plugins one run uses, already resolved from their names."""

    scorer: Scorer | None
    allocator: Allocator
    pruner: type[LayerPruner]
    #: ``--refine``: a refinement run after the pruner on every layer (None: the pruner's mask as it is)
    refiner: type[MaskRefiner] | None = None


@dataclass
class PruneResult:
    allocation: Allocation
    measured: LayerSparsity
    scores: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    layers: list[LayerInfo] = field(default_factory=list)
    #: per step: seconds, peak resident memory, peak device memory (ecoflap.core.devices.StepMeasure)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.allocation.target,
            "max_sparsity": self.allocation.cap,
            "measured_sparsity": self.measured.overall(),
            "measured_per_layer": self.measured.per_layer(),
            "per_tower": self.grouped(lambda info: info.tower),
            "per_block": self.grouped(lambda info: info.block),
            "timings_s": self.timings,
        }

    def grouped(self, key: Callable[[LayerInfo], str]) -> dict[str, dict[str, float]]:
        """Allocated and measured sparsity of each tower (or block), weighted by parameters."""
        sums: dict[str, list[float]] = {}
        for info in self.layers:
            acc = sums.setdefault(key(info), [0.0, 0.0, 0.0])
            acc[0] += self.allocation.sparsity[info.name] * info.size
            acc[1] += self.measured.zeros.get(info.name, 0)
            acc[2] += info.size
        return {name: {"allocated": a / n, "measured": m / n, "params": n} for name, (a, m, n) in sums.items()}


def layer_infos(towers: list[Tower]) -> list[LayerInfo]:
    return [
        LayerInfo(name, lin.weight.numel(), block.name, tower.name)
        for tower in towers
        for block in tower.blocks
        for name, lin in block.linears.items()
    ]


def comparison_for(config: PruneConfig, pruner: type[LayerPruner], adapter: ModelAdapter):
    """Wanda's comparison group: per row for LLaMA / T5 / CLIP, whole matrix for BLIP-2's ViT."""

    def choose(tower: str) -> Comparison:
        if config.comparison != "auto":
            return config.comparison
        return getattr(pruner, "default_comparison", None) or adapter_comparison(adapter, tower)

    return choose


def adapter_comparison(adapter: ModelAdapter, tower: str) -> Comparison:
    return getattr(adapter, "comparison", {}).get(tower, "row")


def compress(
    adapter: ModelAdapter,
    config: PruneConfig,
    methods: Methods,
    fine_batch: Batch,
    score_batch: Batch | None = None,
    progress: ProgressFactory = no_progress,
) -> PruneResult:
    """Score, allocate and prune ``adapter.model`` in place; return what was measured."""
    towers = select_towers(adapter.towers(), config.towers)
    timings: dict[str, float] = {}
    scores = None
    if methods.allocator.needs_scores:
        if methods.scorer is None:
            raise EcoflapError(f"the {methods.allocator.name} allocator needs a --scorer")
        start = time.perf_counter()
        scores = methods.scorer.score(adapter, towers, score_batch or fine_batch, progress)
        timings["coarse"] = time.perf_counter() - start
    allocation = allocate(layer_infos(towers), config, methods.allocator, scores)
    start = time.perf_counter()
    measured = prune_fine(
        adapter, towers, config, methods.pruner, fine_batch, allocation.sparsity, progress, methods.refiner
    )
    timings["fine"] = time.perf_counter() - start
    return PruneResult(allocation, measured, scores, timings, layer_infos(towers))


def select_towers(towers: list[Tower], names: Sequence[str]) -> list[Tower]:
    """The towers named in ``names`` (all when empty), in forward order; an unknown name is an error."""
    known = [t.name for t in towers]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EcoflapError(f"unknown tower {unknown[0]!r}: this model's towers are {', '.join(known)}")
    return [t for t in towers if not names or t.name in names]


def allocate(
    layers: list[LayerInfo], config: PruneConfig, allocator: Allocator, scores: dict[str, float] | None
) -> Allocation:
    """The allocation step alone: one sparsity per prunable layer."""
    request = AllocationRequest(
        layers,
        config.target,
        config.cap,
        scores,
        config.granularity,
        config.aggregation,
        config.per_tower,
    )
    return allocator.allocate(request)


def prune_fine(
    adapter: ModelAdapter,
    towers: list[Tower],
    config: PruneConfig,
    pruner: type[LayerPruner],
    fine_batch: Batch,
    sparsity: dict[str, float],
    progress: ProgressFactory = no_progress,
    refiner: type[MaskRefiner] | None = None,
) -> LayerSparsity:
    """The fine step alone: prune ``adapter.model`` in place to ``sparsity`` per layer (each mask then refined
    by ``refiner``)."""
    return prune_sequential(
        adapter,
        towers,
        fine_batch,
        sparsity,
        lambda layer, comparison: pruner(layer, comparison),
        pattern=config.pattern,
        comparison=comparison_for(config, pruner, adapter),
        micro_batch=config.micro_batch,
        progress=progress,
        onloader=getattr(adapter, "onloader", None),
        make_refiner=(lambda layer, comparison: refiner(layer, comparison)) if refiner else None,
    )
