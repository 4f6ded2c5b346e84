"""Built-in layer pruners: magnitude, Wanda (locuslab/wanda), SparseGPT (IST-DASLab/sparsegpt); RIA (ria.py)
and the DSnoT refinement (dsnot.py) are registered here too.

Re-derived from the papers' algorithms; each works on one ``nn.Linear`` through the
``add_batch`` / ``prune`` / ``free`` contract of :mod:`ecoflap.core.pruning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.pruning import (
    Comparison,
    LayerPruner,
    NMPattern,
    input_sequences,
    input_tokens,
    nm_mask,
    prune_mask,
    validate_sparsity,
)
from ecoflap.plugins.dsnot import DSnoTRefiner
from ecoflap.plugins.ria import RIAPruner


def _zero(layer: nn.Linear, mask: torch.Tensor) -> torch.Tensor:
    """Zero the layer's weights where ``mask`` is True; return the mask."""
    layer.weight.data[mask] = 0
    return mask


class MagnitudePruner(LayerPruner):
    """Prune the smallest |W| (absolute values: the reference's global variant ranked signed W)."""

    name = "magnitude"
    needs_inputs = False
    mask_only = True

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        score = self.layer.weight.detach().abs().float()
        return _zero(self.layer, prune_mask(score, sparsity, self.comparison, pattern))


class WandaPruner(LayerPruner):
    """score_ij = |W_ij| * ||X_j||_2, the squared input norms kept as Wanda's running mean."""

    name = "wanda"
    mask_only = True

    def __init__(self, layer: nn.Linear, comparison: Comparison = "row") -> None:
        super().__init__(layer, comparison)
        self.scaler_row = torch.zeros(layer.in_features, dtype=torch.float32, device=layer.weight.device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        count = input_sequences(inp)
        self.scaler_row *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        self.scaler_row += input_tokens(inp).pow(2).sum(dim=0) / self.nsamples

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        score = self.layer.weight.detach().abs().float() * self.scaler_row.sqrt()
        return _zero(self.layer, prune_mask(score, sparsity, self.comparison, pattern))

    def free(self) -> None:
        self.scaler_row = torch.zeros(0)
        self.nsamples = 0


class SparseGPTPruner(LayerPruner):
    """Optimal Brain Surgeon with the layer Hessian H = (2/N) sum x x^T, over column blocks of 128."""

    name = "sparsegpt"

    def __init__(
        self, layer: nn.Linear, comparison: Comparison = "row", blocksize: int = 128, percdamp: float = 0.01
    ) -> None:
        super().__init__(layer, comparison)
        self.blocksize = blocksize
        self.percdamp = percdamp
        cols = layer.in_features
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=layer.weight.device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        count = input_sequences(inp)
        self.H *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        x = math.sqrt(2 / self.nsamples) * input_tokens(inp)
        self.H += x.T @ x

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        """Prune block by block (the comparison group is always the [rows x blocksize] block, as upstream)."""
        self._validate(sparsity, pattern)
        W = self.layer.weight.detach().float().clone()
        Hinv = self._inverse_hessian_factor(W)
        mask = torch.zeros_like(W, dtype=torch.bool)
        for start in range(0, W.shape[1], self.blocksize):
            end = min(start + self.blocksize, W.shape[1])
            self._prune_block(W, Hinv, mask, slice(start, end), sparsity, pattern)
        W[mask] = 0
        self.layer.weight.data.copy_(W)
        return mask

    def _validate(self, sparsity: float, pattern: NMPattern | None) -> None:
        if pattern is None:
            validate_sparsity(sparsity)
            return
        cols = self.layer.in_features
        if cols % pattern.m or self.blocksize % pattern.m:
            raise EcoflapError(
                f"N:M pattern {pattern} needs an input size and a block size divisible by {pattern.m}, "
                f"got {cols} and {self.blocksize}"
            )

    def _inverse_hessian_factor(self, W: torch.Tensor) -> torch.Tensor:
        """Upper Cholesky factor of the damped H^-1 (dead inputs get H_jj = 1 and W_:j = 0)."""
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        H.diagonal().add_(self.percdamp * torch.mean(torch.diag(H)))
        H = torch.cholesky_inverse(torch.linalg.cholesky(H))
        return torch.linalg.cholesky(H, upper=True)

    def _prune_block(
        self,
        W: torch.Tensor,
        Hinv: torch.Tensor,
        mask: torch.Tensor,
        block: slice,
        sparsity: float,
        pattern: NMPattern | None,
    ) -> None:
        """Choose the block's mask, then prune column by column, spreading each error over the rest."""
        W1 = W[:, block].clone()
        Hinv1 = Hinv[block, block]
        d = torch.diag(Hinv1)
        if pattern is None:
            mask1 = prune_mask(W1.pow(2) / d.pow(2), sparsity, "matrix")
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Err1 = torch.zeros_like(W1)
        for i in range(W1.shape[1]):
            if pattern is not None and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                mask1[:, group] = nm_mask(W1[:, group].pow(2) / d[group].pow(2), pattern)
            w = W1[:, i]
            err = torch.where(mask1[:, i], w, torch.zeros_like(w)) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W1[mask1] = 0
        W[:, block] = W1
        W[:, block.stop :] -= Err1 @ Hinv[block, block.stop :]
        mask[:, block] = mask1

    def free(self) -> None:
        self.H = torch.zeros(0)
        self.nsamples = 0


@hookimpl
def register_pruners(register: Callable[[type[LayerPruner]], None]) -> None:
    """Register the built-in pruners."""
    register(MagnitudePruner)
    register(WandaPruner)
    register(SparseGPTPruner)
    register(RIAPruner)
    register(DSnoTRefiner)
