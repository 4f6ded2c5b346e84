"""RIA (Relative Importance and Activations) against its definition, computed by brute force on small matrices."""

from __future__ import annotations

import math

import pytest
import torch
from test_pruners import brute_matrix_mask, brute_row_mask, calibrate, correlated_inputs, make_layer

from ecoflap.core.pruning import NMPattern
from ecoflap.plugins.ria import ACTIVATION_POWER, RIAPruner, ria_score


def brute_ria_score(W: torch.Tensor, X: torch.Tensor, a: float = ACTIVATION_POWER) -> list[list[float]]:
    """(|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2^a, one weight at a time in float64."""
    rows, cols = W.shape
    tokens = X.reshape(-1, cols).double().tolist()
    w = W.double().tolist()
    score = []
    for i in range(rows):
        line = []
        for j in range(cols):
            row_sum = sum(abs(w[i][k]) for k in range(cols))
            col_sum = sum(abs(w[k][j]) for k in range(rows))
            norm = math.sqrt(sum(t[j] ** 2 for t in tokens))
            line.append((abs(w[i][j]) / row_sum + abs(w[i][j]) / col_sum) * norm**a)
        score.append(line)
    return score


def brute_nm_mask(score: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """In each row's groups of M consecutive inputs, prune the M - N lowest scores."""
    mask = torch.zeros(score.shape, dtype=torch.bool)
    for i in range(score.shape[0]):
        for start in range(0, score.shape[1], pattern.m):
            group = sorted((float(score[i, j]), j) for j in range(start, start + pattern.m))
            for _, j in group[: pattern.m - pattern.n]:
                mask[i, j] = True
    return mask


def pruned_by_ria(rows: int, cols: int, comparison: str, sparsity: float, pattern: NMPattern | None = None):
    layer = make_layer(rows, cols, seed=3)
    X = correlated_inputs(samples=6, tokens=5, cols=cols, seed=4)
    brute = torch.tensor(brute_ria_score(layer.weight.detach(), X))
    pruner = calibrate(RIAPruner(layer, comparison), X, splits=[2, 1, 3])
    return pruner.prune(sparsity, pattern), brute, layer


@pytest.mark.parametrize("comparison", ["row", "matrix"])
def test_unstructured_mask_is_the_brute_force_one(comparison: str) -> None:
    mask, brute, layer = pruned_by_ria(8, 16, comparison, 0.5)
    expected = {"row": brute_row_mask, "matrix": brute_matrix_mask}[comparison](brute, 0.5)
    assert torch.equal(mask, expected)
    assert torch.equal(layer.weight == 0, mask)


def test_two_four_mask_is_the_brute_force_one() -> None:
    pattern = NMPattern(2, 4)
    mask, brute, layer = pruned_by_ria(8, 16, "row", 0.0, pattern)
    assert torch.equal(mask, brute_nm_mask(brute, pattern))
    assert (mask.reshape(8, -1, 4).sum(dim=-1) == 2).all()


def test_score_is_the_definition_up_to_wanda_s_mean_over_sequences() -> None:
    """scaler_row is ||X_j||^2 / sequences (Wanda's running mean): the score is the definition times a constant."""
    layer = make_layer(6, 12, seed=5)
    X = correlated_inputs(samples=4, tokens=3, cols=12, seed=6)
    pruner = calibrate(RIAPruner(layer, "row"), X, splits=[1, 3])
    score = ria_score(layer.weight.detach(), pruner.scaler_row).double()
    brute = torch.tensor(brute_ria_score(layer.weight.detach(), X), dtype=torch.float64)
    assert torch.allclose(score * 4 ** (ACTIVATION_POWER / 2), brute, rtol=1e-5)
    # not Wanda: relative importance changes the ranking
    wanda = layer.weight.detach().abs() * pruner.scaler_row.sqrt()
    assert not torch.equal(brute_row_mask(brute, 0.5), brute_row_mask(wanda, 0.5))


def test_bfloat16_weights_keep_float32_statistics() -> None:
    layer = make_layer(8, 16, seed=7).to(torch.bfloat16)
    X = correlated_inputs(samples=4, tokens=5, cols=16, seed=8)
    pruner = calibrate(RIAPruner(layer, "row"), X.to(torch.bfloat16))
    assert pruner.scaler_row.dtype == torch.float32
    brute = torch.tensor(brute_ria_score(layer.weight.detach().float(), X.to(torch.bfloat16).float()))
    assert torch.equal(pruner.prune(0.5), brute_row_mask(brute, 0.5))
