"""The layer-pruner contract (``add_batch`` / ``prune`` / ``free``) and the mask helpers pruners share.

A pruner is a small object over ONE ``nn.Linear`` (the shape of IST-DASLab/sparsegpt ``SparseGPT`` and
locuslab/wanda ``WrappedGPT``): a forward hook feeds it the layer's inputs with ``add_batch``; then
``prune(sparsity, pattern)`` zeroes weights in place and returns the mask of PRUNED weights
(``True`` where the weight was set to zero); ``free()`` drops the statistics.

A :class:`MaskRefiner` (``--refine``, e.g. DSnoT) is registered as a pruner too: it collects its own
statistics from the same inputs, then changes the mask a mask-only pruner chose for the same layer.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ecoflap.core.errors import EcoflapError

Comparison = Literal["row", "matrix"]


@dataclass(frozen=True)
class NMPattern:
    """Semi-structured N:M sparsity: at most ``n`` non-zeros in every ``m`` consecutive input weights."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise EcoflapError(f"N:M pattern {self.n}:{self.m} is invalid: need 0 < N < M (for example 2:4 or 4:8)")

    @classmethod
    def parse(cls, text: str) -> NMPattern:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if match is None:
            raise EcoflapError(f"N:M pattern {text!r} is not of the form N:M (for example 2:4)")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


class LayerPruner(ABC):
    """Prunes one linear layer from statistics of its inputs."""

    name: ClassVar[str]
    #: whether ``add_batch`` needs the layer's inputs (magnitude does not)
    needs_inputs: ClassVar[bool] = True
    #: whether ``prune`` only zeroes weights, leaving the kept ones as they were (then ``--refine`` may follow)
    mask_only: ClassVar[bool] = False

    def __init__(self, layer: nn.Linear, comparison: Comparison = "row") -> None:
        self.layer = layer
        self.comparison = comparison
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """Accumulate statistics of one batch of inputs ``inp`` (``[..., d_in]``) and outputs."""

    @abstractmethod
    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        """Zero weights in place; return the boolean mask of pruned weights (shape of the weight)."""

    def free(self) -> None:  # noqa: B027 (optional hook)
        """Drop accumulated statistics."""


class MaskRefiner(LayerPruner):
    """Refines the mask that a mask-only pruner chose for the same layer (``--refine``), in the fine step."""

    @abstractmethod
    def refine(self, dense: torch.Tensor, mask: torch.Tensor, pattern: NMPattern | None = None) -> torch.Tensor:
        """From the layer's ``dense`` weights and the pruner's ``mask`` (True = pruned), set the layer's weights to
        the dense ones with the refined mask zeroed; return the refined mask."""

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        raise EcoflapError(f"{self.name} refines another pruner's mask: use --refine {self.name} after a --pruner")


def input_tokens(inp: torch.Tensor) -> torch.Tensor:
    """Inputs as ``[tokens, d_in]`` in fp32."""
    return inp.detach().reshape(-1, inp.shape[-1]).float()


def input_sequences(inp: torch.Tensor) -> int:
    """How many sequences a batch holds (Wanda and SparseGPT average over sequences)."""
    return inp.shape[0] if inp.dim() > 2 else 1


def add_to_mean(mean: torch.Tensor, nsamples: int, total: torch.Tensor, count: int) -> int:
    """Wanda's running mean over sequences: ``mean`` (in place) becomes the mean over ``nsamples + count``
    sequences, given the ``total`` of the ``count`` new ones; returns ``nsamples + count``."""
    mean *= nsamples / (nsamples + count)
    mean += total / (nsamples + count)
    return nsamples + count


def validate_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise EcoflapError(f"layer sparsity {sparsity} is out of range: use a value in [0, 1)")


def nm_mask(score: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """In every ``m`` consecutive input weights of each row, prune the ``m - n`` lowest scores."""
    rows, cols = score.shape
    if cols % pattern.m:
        raise EcoflapError(f"N:M pattern {pattern} needs an input size divisible by {pattern.m}, got {cols}")
    groups = score.reshape(rows, cols // pattern.m, pattern.m)
    lowest = torch.topk(groups, pattern.m - pattern.n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    return mask.reshape(rows, cols)


def prune_mask(
    score: torch.Tensor, sparsity: float, comparison: Comparison, pattern: NMPattern | None = None
) -> torch.Tensor:
    """Boolean mask (True = prune) of the lowest scores: per row, per matrix, or N:M."""
    if pattern is not None:
        return nm_mask(score, pattern)
    validate_sparsity(sparsity)
    if comparison == "row":
        count = int(score.shape[1] * sparsity)
        order = torch.sort(score, dim=1, stable=True).indices[:, :count]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
    count = int(score.numel() * sparsity)
    order = torch.sort(score.flatten(), stable=True).indices[:count]
    return torch.zeros(score.numel(), dtype=torch.bool, device=score.device).scatter_(0, order, True).view_as(score)
