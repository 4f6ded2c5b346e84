"""A third-party pruner: keeps a seeded random subset of each row (a floor for real pruners)."""

from __future__ import annotations

import torch

from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.pruning import LayerPruner, NMPattern

ECOFLAP_API_VERSION = "1.0"


class RandomKeepPruner(LayerPruner):
    name = "random-keep"
    needs_inputs = False

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        weight = self.layer.weight.data
        gen = torch.Generator().manual_seed(0)
        score = torch.rand(weight.shape, generator=gen)
        count = int(weight.shape[1] * (pattern.sparsity if pattern else sparsity))
        mask = torch.zeros_like(weight, dtype=torch.bool)
        mask.scatter_(1, score.argsort(dim=1)[:, :count], True)
        weight[mask] = 0
        return mask


@hookimpl
def register_pruners(register) -> None:
    register(RandomKeepPruner)
