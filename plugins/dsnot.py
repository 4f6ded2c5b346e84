"""DSnoT, Dynamic Sparse No Training (Zhang et al., ICLR 2024, "Dynamic Sparse No Training: Training-Free
Fine-tuning for Sparse LLMs"; zyxxmu/DSnoT): prune-and-grow swaps in each output row of another pruner's mask.

Per row i the expected reconstruction error is e_i = sum over pruned j of W_ij * s_j, with s_j the sum of input
feature j over a sequence's tokens averaged over sequences (the reference's ``sum_metric_row``). While
|e_i| > update_threshold, for at most max_cycles cycles, each row swaps one pair:

- grow the pruned weight whose W_ij * s_j / Var(X_j)^pow_of_var is the largest (e_i > 0) or the most negative
  (e_i <= 0), each pruned weight at most once;
- prune a kept weight: unstructured, the kept weight of the opposite sign of W_ij * s_j (negative when
  e_i >= 0, positive when e_i < 0) with the lowest Wanda score |W_ij| * ||X_j||_2; N:M, the kept weight with the
  lowest Wanda score in the grown weight's group of M (the row's count, and each group's, stay the same);
- N:M only: a swap that would flip the sign of e_i stops the row (the reference's defaults: the sign check
  applies to N:M, not to unstructured masks).

Defaults are the reference's: 50 cycles, threshold 0.1, variance to the power 1. Var(X_j) is the token-weighted
mean of each sequence's (population) variance, as the reference computes it feeding one sequence per batch.
Where the reference would run out of candidates (its pointers then reach kept weights, which changes the
row's sparsity, and an N:M group with no original kept weight left), the row stops instead. In N:M groups the
weight to prune is chosen by the Wanda score whatever the pruner (the reference uses its initial pruner's score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecoflap.core.pruning import Comparison, MaskRefiner, NMPattern, add_to_mean

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DSnoTSettings:
    """The reference's hyperparameters (``--max_cycle_time``, ``--update_threshold``, ``--pow_of_var_regrowing``)."""

    max_cycles: int = 50
    update_threshold: float = 0.1
    pow_of_var: float = 1.0


@dataclass
class InputStatistics:
    """Per input feature, in float32: Wanda's squared norm, the sum over a sequence, the variance."""

    scaler_row: torch.Tensor
    sum_row: torch.Tensor
    var: torch.Tensor


class Candidates:
    """Per row, columns in the order they are to be taken, each at most once."""

    def __init__(self, key: torch.Tensor, valid: torch.Tensor, descending: bool = False) -> None:
        """Valid columns by ``key``, ascending (ties: lower column first) or descending (ties: higher first)."""
        if descending:
            self.order = torch.sort(key.masked_fill(~valid, -torch.inf), dim=1, stable=True).indices.flip(1)
        else:
            self.order = torch.sort(key.masked_fill(~valid, torch.inf), dim=1, stable=True).indices
        self.count = valid.sum(dim=1)
        self.taken = torch.zeros_like(self.count)

    def next(self) -> Pair:
        """Each row's next column, and whether the row has one left."""
        at = self.taken.clamp(max=self.order.shape[1] - 1).unsqueeze(1)
        return self.order.gather(1, at).squeeze(1), self.taken < self.count

    def advance(self, rows: torch.Tensor) -> None:
        self.taken += rows.long()


def either(condition: torch.Tensor, when_true: Pair, when_false: Pair) -> Pair:
    """Per row, the first pair's entries where ``condition`` holds, else the second's."""
    return tuple(torch.where(condition, a, b) for a, b in zip(when_true, when_false, strict=True))


def dsnot_mask(
    W: torch.Tensor,
    mask: torch.Tensor,
    stats: InputStatistics,
    pattern: NMPattern | None = None,
    settings: DSnoTSettings = DSnoTSettings(),
) -> torch.Tensor:
    """The refined mask (True = pruned) of the float32 dense weights ``W`` and the pruner's ``mask``."""
    contribution = W * stats.sum_row  # the reference's DSnoT_metric
    wanda = W.abs() * stats.scaler_row.sqrt()
    growth = torch.nan_to_num(contribution / stats.var.pow(settings.pow_of_var), nan=0.0)
    error = (contribution * mask).sum(dim=1)
    grow_up = Candidates(growth, mask & (growth > 0), descending=True)
    grow_down = Candidates(growth, mask & (growth < 0))
    swap = GroupSwaps(wanda, mask, pattern.m) if pattern else RowSwaps(wanda, mask, contribution)
    refined = mask.clone()
    rows = torch.arange(W.shape[0], device=W.device)
    active = torch.ones_like(error, dtype=torch.bool)
    initial_sign = error.sign()
    for _ in range(settings.max_cycles):
        active &= error.abs() > settings.update_threshold
        if not active.any():
            break
        upward = error > 0
        grow, can_grow = either(upward, grow_up.next(), grow_down.next())
        prune, can_prune = swap.choose(error, grow)
        after = error + contribution[rows, prune] - contribution[rows, grow]
        active &= can_grow & can_prune
        if swap.keeps_sign:
            active &= after.sign() == initial_sign
        refined[rows[active], prune[active]] = True
        refined[rows[active], grow[active]] = False
        error = torch.where(active, after, error)
        grow_up.advance(active & upward)
        grow_down.advance(active & ~upward)
        swap.taken(active, prune)
    return refined


class RowSwaps:
    """Unstructured: prune the kept weight of the sign that moves the error toward 0, lowest Wanda score first."""

    keeps_sign = False

    def __init__(self, wanda: torch.Tensor, mask: torch.Tensor, contribution: torch.Tensor) -> None:
        self.up = Candidates(wanda, ~mask & (contribution > 0))
        self.down = Candidates(wanda, ~mask & (contribution < 0))
        self.upward = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)

    def choose(self, error: torch.Tensor, grow: torch.Tensor) -> Pair:
        self.upward = error < 0
        return either(self.upward, self.up.next(), self.down.next())

    def taken(self, active: torch.Tensor, prune: torch.Tensor) -> None:
        self.up.advance(active & self.upward)
        self.down.advance(active & ~self.upward)


class GroupSwaps:
    """N:M: prune the originally kept weight with the lowest Wanda score in the grown weight's group of M."""

    keeps_sign = True  # a swap that flips the error's sign stops the row

    def __init__(self, wanda: torch.Tensor, mask: torch.Tensor, m: int) -> None:
        self.score = wanda.masked_fill(mask, torch.inf)
        self.m = m

    def choose(self, error: torch.Tensor, grow: torch.Tensor) -> Pair:
        group = (grow - grow % self.m).unsqueeze(1) + torch.arange(self.m, device=grow.device)
        lowest, at = self.score.gather(1, group).min(dim=1)
        return group.gather(1, at.unsqueeze(1)).squeeze(1), lowest.isfinite()

    def taken(self, active: torch.Tensor, prune: torch.Tensor) -> None:
        rows = torch.arange(prune.shape[0], device=prune.device)
        self.score[rows[active], prune[active]] = torch.inf


class DSnoTRefiner(MaskRefiner):
    """DSnoT after a mask-only pruner (``--refine dsnot``): the same sparsity in every row, a lower expected error."""

    name = "dsnot"

    def __init__(self, layer: nn.Linear, comparison: Comparison = "row", settings: DSnoTSettings | None = None) -> None:
        super().__init__(layer, comparison)
        self.settings = settings or DSnoTSettings()
        zeros = {"dtype": torch.float32, "device": layer.weight.device}
        self.stats = InputStatistics(*(torch.zeros(layer.in_features, **zeros) for _ in range(3)))
        self.ntokens = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        """Fold in one batch: ``[sequences, tokens, d_in]`` (or ``[tokens, d_in]``, one sequence)."""
        x = inp.detach().float()
        sequences = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() > 2 else x.unsqueeze(0)
        tokens = sequences.reshape(-1, sequences.shape[-1])
        count = sequences.shape[0]
        add_to_mean(self.stats.scaler_row, self.nsamples, tokens.pow(2).sum(dim=0), count)
        self.nsamples = add_to_mean(self.stats.sum_row, self.nsamples, tokens.sum(dim=0), count)
        variance = sequences.var(dim=1, unbiased=False).sum(dim=0) * sequences.shape[1]
        self.ntokens = add_to_mean(self.stats.var, self.ntokens, variance, tokens.shape[0])

    def refine(self, dense: torch.Tensor, mask: torch.Tensor, pattern: NMPattern | None = None) -> torch.Tensor:
        refined = dsnot_mask(dense.float(), mask, self.stats, pattern, self.settings)
        self.layer.weight.data.copy_(dense.masked_fill(refined, 0))
        return refined

    def free(self) -> None:
        self.stats = InputStatistics(torch.zeros(0), torch.zeros(0), torch.zeros(0))
        self.nsamples = self.ntokens = 0
