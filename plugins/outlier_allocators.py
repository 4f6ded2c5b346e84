"""Layerwise sparsity from the Wanda metric of each block of the dense model: OWL and DLP.

Both read one statistic per block (transformer block, the reference's "layer") of the Wanda metric
A_ij = |W_ij| * ||X_j||_2 over every prunable linear of the block, computed block by block on the dense
model (luuyin/OWL ``prune_wanda_outlier``, ironartisan/DLP ``get_dlp_ratios``):

- OWL (Yin et al., ICML 2024): the layerwise outlier distribution D_l, the share of A entries above
  M times the block's mean A. Higher D_l, more kept.
- DLP (Chen et al., ICML 2025): the block's unimportance U_l = |median A| (the paper; the released
  unstructured code takes the mean: ``--dlp-statistic mean``); its relative importance I_l = 1 - U_l / sum U.

Then both map their values v_l the same way: min-max to [0, 2 lambda] (DLP: 2 alpha), minus their mean,
plus 1 - target: the density of block l. The reference subtracts the plain mean over blocks, which meets
the target only when every block has the same size (LLaMA's decoder layers); here the one common shift
is chosen so that the kept parameters are exactly floor(N (1 - target)), each block within the cap
(``shifted_keep_counts``). With equal blocks and no capped block it is the reference's mean.
A block of equal values everywhere (max = min, a division by zero in the reference) gets the uniform target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ecoflap.core.adapters import Batch, Block, ModelAdapter, Tower, split_batch
from ecoflap.core.allocation import (
    Allocation,
    AllocationRequest,
    Allocator,
    budgets,
    group_layers,
    shifted_keep_counts,
)
from ecoflap.core.errors import EcoflapError
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.scoring import Scorer
from ecoflap.core.sequential import capture_inputs, collect_statistics, run_block

STATISTICS = ("outlier-ratio", "median", "mean")


# ---- the statistics of the dense model ---------------------------------------------------------------
class InputNorms:
    """||X_j||_2 over every token of the calibration inputs of one linear (``add_batch`` from a forward hook).
    Wanda divides the squares by the number of sequences: one factor for a whole block, which neither OWL's
    ratio to the block's mean nor DLP's shares of the sum of blocks can see."""

    needs_inputs = True

    def __init__(self, layer: nn.Linear) -> None:
        self.squares = torch.zeros(layer.in_features, dtype=torch.float32, device=layer.weight.device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        self.squares += inp.detach().reshape(-1, inp.shape[-1]).float().pow(2).sum(dim=0).to(self.squares.device)

    def norms(self) -> torch.Tensor:
        return self.squares.sqrt()


def wanda_metric(layer: nn.Linear, norms: torch.Tensor) -> torch.Tensor:
    """A_ij = |W_ij| * ||X_j||_2, Wanda's score."""
    return layer.weight.detach().abs().float() * norms.to(layer.weight.device)


def outlier_ratio(metric: torch.Tensor, owl_m: float) -> float:
    """OWL's D: the share of entries above M times their mean (strictly above, as ``check_outlier_mean``)."""
    return float((metric > metric.mean() * owl_m).sum()) / metric.numel()


def block_statistic(metric: torch.Tensor, statistic: str, owl_m: float = 5.0) -> float:
    """One block's value: OWL's outlier ratio, or the median (torch's lower median) or mean of its metric."""
    if statistic == "outlier-ratio":
        return outlier_ratio(metric, owl_m)
    return float(metric.median() if statistic == "median" else metric.mean())


class WandaMetricScorer(Scorer):
    """OWL's and DLP's statistics: each block's Wanda metric on the dense model, reduced to one value that
    every linear of the block carries (the allocator reads it per block)."""

    name = "wanda-metric"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if options.get("statistic") not in STATISTICS:
            raise EcoflapError(
                "the wanda-metric scorer gives the block statistics of --allocator owl or dlp, not importance "
                "scores: use --scorer zeroth-order or first-order with --allocator ecoflap"
            )

    def score(
        self, adapter: ModelAdapter, towers: list[Tower], batch: Batch, progress: ProgressFactory = no_progress
    ) -> dict[str, float]:
        metric = lambda block, norms: torch.cat(  # noqa: E731
            [wanda_metric(lin, norms[n].norms()).flatten() for n, lin in block.linears.items()]
        )
        reduce = lambda block, norms: block_statistic(  # noqa: E731
            metric(block, norms), self.options["statistic"], self.options.get("owl_m", 5.0)
        )
        return dense_block_statistics(adapter, towers, batch, reduce, self.options.get("micro_batch", 4), progress)


def dense_block_statistics(
    adapter: ModelAdapter,
    towers: list[Tower],
    batch: Batch,
    reduce: Any,
    micro_batch: int,
    progress: ProgressFactory = no_progress,
) -> dict[str, float]:
    """``reduce(block, norms)`` for each block, its inputs replayed through the dense blocks before it (as the
    references do); the value is given to every linear of the block."""
    values: dict[str, float] = {}
    onloader = getattr(adapter, "onloader", None)
    bar = progress(total=sum(len(t.blocks) for t in towers), desc="wanda metric per block")
    with torch.no_grad():
        for tower in towers:
            inputs = [capture_inputs(adapter, tower.blocks[0], m) for m in split_batch(batch, micro_batch)]
            for block in tower.blocks:
                with onloader.held(block.module) if onloader else contextlib.nullcontext():
                    values |= _block_values(block, inputs, reduce)
                    inputs = run_block(block, inputs)
                bar.update(1)
    bar.close()
    return values


def _block_values(block: Block, inputs: list[Any], reduce: Any) -> dict[str, float]:
    if not block.linears:
        return {}
    norms = {n: InputNorms(lin) for n, lin in block.linears.items()}
    collect_statistics(block, norms, inputs)  # type: ignore[arg-type]
    return dict.fromkeys(block.linears, reduce(block, norms))


# ---- the allocators ----------------------------------------------------------------------------------
def spread_densities(values: Mapping[str, float], spread: float, target: float) -> dict[str, float]:
    """The references' mapping: v min-max scaled to [0, 2 spread], minus its mean, plus 1 - target."""
    low, high = min(values.values()), max(values.values())
    width = high - low
    scaled = {g: (v - low) / width * 2 * spread if width > 0 else 0.0 for g, v in values.items()}
    mean = sum(scaled.values()) / len(scaled)
    return {g: s - mean + (1 - target) for g, s in scaled.items()}


def dlp_importance(unimportance: Mapping[str, float]) -> dict[str, float]:
    """DLP's relative importance I_l = 1 - U_l / sum U, with U_l = |statistic|."""
    total = sum(abs(u) for u in unimportance.values())
    return {g: 1 - abs(u) / total if total > 0 else 1.0 for g, u in unimportance.items()}


class _BlockStatisticAllocator(Allocator):
    """Densities per block from one statistic per block, shifted to meet the target exactly within the cap."""

    scorer: ClassVar[str | None] = "wanda-metric"
    spread_option: ClassVar[str]

    def values(self, statistics: Mapping[str, float]) -> dict[str, float]:
        """The per-block values that the spread maps (higher: denser)."""
        return dict(statistics)

    def allocate(self, request: AllocationRequest) -> Allocation:
        statistics = self._block_statistics(request)
        groups, sizes = group_layers(request)
        spread = float(self.options.get(self.spread_option, 0.0))
        keep: dict[str, int] = {}
        for members in budgets(request, groups):
            values = self.values({g: statistics[g] for g in sorted(members)})
            density = spread_densities(values, spread, request.target)
            keep |= shifted_keep_counts(density, {g: sizes[g] for g in members}, request.target, request.cap)
        sparsity = {la.name: 1.0 - keep[groups[la.name]] / sizes[groups[la.name]] for la in request.layers}
        return Allocation(sparsity, groups, keep, sizes, request.target, request.cap, self.name)

    def _block_statistics(self, request: AllocationRequest) -> dict[str, float]:
        if request.granularity != "block":
            raise EcoflapError(f"the {self.name} allocator sets one sparsity per block: use --granularity block")
        if request.scores is None:
            raise EcoflapError(f"the {self.name} allocator needs the wanda-metric statistics of the dense model")
        missing = [la.name for la in request.layers if la.name not in request.scores]
        if missing:
            raise EcoflapError(f"no block statistic for {len(missing)} layers, e.g. {missing[0]}")
        statistics: dict[str, float] = {}
        for la in request.layers:
            value = float(request.scores[la.name])
            if statistics.setdefault(la.block, value) != value:
                raise EcoflapError(f"the layers of block {la.block} carry different statistics: not wanda-metric's")
        return statistics


class OwlAllocator(_BlockStatisticAllocator):
    """OWL: blocks with more outliers of the Wanda metric keep more weights (spread 2 lambda)."""

    name = "owl"
    spread_option = "owl_lambda"


class DlpAllocator(_BlockStatisticAllocator):
    """DLP: blocks whose median Wanda metric is larger are less important and keep fewer (spread 2 alpha)."""

    name = "dlp"
    spread_option = "dlp_alpha"

    def values(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return dlp_importance(statistics)
