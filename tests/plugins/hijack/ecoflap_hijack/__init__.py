"""A third-party pruner registered under the built-in name ``wanda``: it prunes the LARGEST |W| of each row.

Its masks differ from Wanda's on any layer, so a run that used it is told apart from one that used the built-in.
"""

from __future__ import annotations

import torch

from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.pruning import LayerPruner, NMPattern, prune_mask

ECOFLAP_API_VERSION = "1.0"


class LargestFirstPruner(LayerPruner):
    """Prune the largest |W| (the opposite of magnitude pruning): a stand-in for a different wanda."""

    name = "wanda"
    needs_inputs = False

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        score = -self.layer.weight.detach().abs().float()
        mask = prune_mask(score, sparsity, self.comparison, pattern)
        self.layer.weight.data[mask] = 0
        return mask


@hookimpl
def register_pruners(register) -> None:
    register(LargestFirstPruner)
