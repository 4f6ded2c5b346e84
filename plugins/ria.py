"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play: An Efficient
Post-training Pruning Method for Large Language Models";
biomedical-cybernetics/Relative-importance-and-activation-pruning).

score_ij = (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * (||X_j||_2)^a, a = 0.5 (the reference's ``--a``),
with ||X_j||_2^2 kept as Wanda's running mean over sequences (the reference's ``scaler_row``).
"""

from __future__ import annotations

import torch
from torch import nn

from ecoflap.core.pruning import (
    Comparison,
    LayerPruner,
    NMPattern,
    add_to_mean,
    input_sequences,
    input_tokens,
    prune_mask,
)

#: the reference's default exponent of the activation norm
ACTIVATION_POWER = 0.5


def relative_importance(W: torch.Tensor) -> torch.Tensor:
    """|W_ij| over its input column's sum plus |W_ij| over its output row's sum (an all-zero line scores 0)."""
    magnitude = W.abs()
    tiny = torch.finfo(magnitude.dtype).tiny
    column = magnitude.sum(dim=0, keepdim=True).clamp_min(tiny)
    row = magnitude.sum(dim=1, keepdim=True).clamp_min(tiny)
    return magnitude / column + magnitude / row


def ria_score(W: torch.Tensor, scaler_row: torch.Tensor, power: float = ACTIVATION_POWER) -> torch.Tensor:
    """RIA's score from the weights and the inputs' squared norms per feature (``scaler_row``)."""
    return relative_importance(W.float()) * scaler_row.sqrt().pow(power)


class RIAPruner(LayerPruner):
    """RIA: relative importance times the input norm to the power a, lowest scores pruned.

    Unstructured masks follow ``--comparison`` as Wanda's do (per row for language models); the reference's
    default ranks the whole matrix (``--comparison matrix`` reproduces it). N:M masks are the plain N:M of the
    scores, the reference's default: its optional channel permutation (``--reallocation``, ``--lsa``) is not done.
    """

    name = "ria"
    mask_only = True

    def __init__(self, layer: nn.Linear, comparison: Comparison = "row", power: float = ACTIVATION_POWER) -> None:
        super().__init__(layer, comparison)
        self.power = power
        self.scaler_row = torch.zeros(layer.in_features, dtype=torch.float32, device=layer.weight.device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        total = input_tokens(inp).pow(2).sum(dim=0)
        self.nsamples = add_to_mean(self.scaler_row, self.nsamples, total, input_sequences(inp))

    def prune(self, sparsity: float, pattern: NMPattern | None = None) -> torch.Tensor:
        score = ria_score(self.layer.weight.detach(), self.scaler_row, self.power)
        mask = prune_mask(score, sparsity, self.comparison, pattern)
        self.layer.weight.data[mask] = 0
        return mask

    def free(self) -> None:
        self.scaler_row = torch.zeros(0)
        self.nsamples = 0
