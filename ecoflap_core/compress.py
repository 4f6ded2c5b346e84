"""The method end to end on a loaded model: COARSE scores -> allocation -> FINE layer-wise pruning."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ecoflap_core.adapters import Batch, ModelAdapter, Tower
from ecoflap_core.allocation import Allocation, AllocationRequest, Allocator, LayerInfo
from ecoflap_core.config import PruneConfig
from ecoflap_core.errors import EcoflapError
from ecoflap_core.progress import ProgressFactory, no_progress
from ecoflap_core.pruning import Comparison, LayerPruner
from ecoflap_core.scoring import Scorer
from ecoflap_core.sequential import LayerSparsity, prune_sequential


@dataclass
class Methods:
    """The plugins one run uses, already resolved from their names."""

    scorer: Scorer | None
    allocator: Allocator
    pruner: type[LayerPruner]


@dataclass
class PruneResult:
    allocation: Allocation
    measured: LayerSparsity
    scores: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.allocation.target,
            "max_sparsity": self.allocation.cap,
            "measured_sparsity": self.measured.overall(),
            "measured_per_layer": self.measured.per_layer(),
            "timings_s": self.timings,
        }


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
    towers = adapter.towers()
    timings: dict[str, float] = {}
    scores = None
    if methods.allocator.needs_scores:
        if methods.scorer is None:
            raise EcoflapError(f"the {methods.allocator.name} allocator needs a --scorer")
        start = time.perf_counter()
        scores = methods.scorer.score(adapter, towers, score_batch or fine_batch, progress)
        timings["coarse"] = time.perf_counter() - start
    request = AllocationRequest(
        layer_infos(towers),
        config.target,
        config.cap,
        scores,
        config.granularity,
        config.aggregation,
        config.per_tower,
    )
    allocation = methods.allocator.allocate(request)
    start = time.perf_counter()
    measured = prune_sequential(
        adapter,
        towers,
        fine_batch,
        allocation.sparsity,
        lambda layer, comparison: methods.pruner(layer, comparison),
        pattern=config.pattern,
        comparison=comparison_for(config, methods.pruner, adapter),
        micro_batch=config.micro_batch,
        progress=progress,
    )
    timings["fine"] = time.perf_counter() - start
    return PruneResult(allocation, measured, scores, timings)
