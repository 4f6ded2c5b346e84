"""The layer pruners (magnitude, Wanda, SparseGPT) and the shared mask helper, against their definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecoflap.core.errors import EcoflapError
from ecoflap.core.pruning import LayerPruner, NMPattern, prune_mask
from ecoflap.plugins.pruners import MagnitudePruner, SparseGPTPruner, WandaPruner

PRUNERS = [MagnitudePruner, WandaPruner, SparseGPTPruner]


# -------------------------------------------------------------------------
# Helpers: tiny layers, calibration inputs, brute-force rankings
# -------------------------------------------------------------------------


def make_layer(rows: int = 16, cols: int = 64, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(cols, rows, bias=False)
    nn.init.normal_(layer.weight)
    return layer


def correlated_inputs(samples: int = 32, tokens: int = 8, cols: int = 64, seed: int = 1) -> torch.Tensor:
    """X = G @ A * scale: mixed (correlated) features with per-feature scales of varied size."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(samples, tokens, cols, generator=gen)
    A = torch.eye(cols) + torch.randn(cols, cols, generator=gen) / cols**0.5
    scale = torch.exp(torch.randn(cols, generator=gen))
    return G @ A * scale


def calibrate(pruner: LayerPruner, X: torch.Tensor, splits: list[int] | None = None) -> LayerPruner:
    """Feed the inputs ``X`` ([samples, tokens, d_in]) through ``add_batch`` in batches of ``splits`` samples."""
    for chunk in X.split(splits or [X.shape[0]]):
        pruner.add_batch(chunk, pruner.layer(chunk))
    return pruner


def brute_row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per row, prune the floor(d_in * sparsity) lowest (score, column) pairs."""
    rows, cols = score.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        ranked = sorted((float(score[r, c]), c) for c in range(cols))
        for _, c in ranked[: int(cols * sparsity)]:
            mask[r, c] = True
    return mask


def brute_matrix_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Over the whole matrix, prune the floor(numel * sparsity) lowest (score, flat index) pairs."""
    flat = score.flatten()
    ranked = sorted((float(flat[k]), k) for k in range(flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    for _, k in ranked[: int(flat.numel() * sparsity)]:
        mask[k] = True
    return mask.view_as(score)


BRUTE = {"row": brute_row_mask, "matrix": brute_matrix_mask}


def output_error(W: torch.Tensor, W_pruned: torch.Tensor, X: torch.Tensor) -> float:
    """Layer reconstruction error ||W X - W' X||_F on the calibration tokens."""
    tokens = X.reshape(-1, X.shape[-1]).double()
    return float(torch.linalg.norm(tokens @ (W.double() - W_pruned.double()).T))


def nm_zero_counts(W: torch.Tensor, m: int) -> torch.Tensor:
    return (W == 0).reshape(W.shape[0], -1, m).sum(dim=-1)


# -------------------------------------------------------------------------
# prune_mask
# -------------------------------------------------------------------------


@pytest.mark.parametrize("comparison", ["row", "matrix"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75])
def test_prune_mask_equals_brute_force_ranking(comparison: str, sparsity: float) -> None:
    torch.manual_seed(0)
    score = torch.rand(16, 64)
    mask = prune_mask(score, sparsity, comparison)
    assert torch.equal(mask, BRUTE[comparison](score, sparsity))


@pytest.mark.parametrize("comparison", ["row", "matrix"])
def test_prune_mask_breaks_ties_stably(comparison: str) -> None:
    torch.manual_seed(0)
    score = torch.randint(0, 4, (8, 32)).float()  # many ties; the lower index goes first
    mask = prune_mask(score, 0.4, comparison)
    assert torch.equal(mask, BRUTE[comparison](score, 0.4))


def test_prune_mask_counts_are_exact() -> None:
    score = torch.rand(16, 64)
    assert (prune_mask(score, 0.3, "row").sum(dim=1) == int(64 * 0.3)).all()
    assert int(prune_mask(score, 0.3, "matrix").sum()) == int(16 * 64 * 0.3)


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8), NMPattern(1, 4)])
def test_prune_mask_nm_prunes_the_lowest_of_each_group(pattern: NMPattern) -> None:
    torch.manual_seed(0)
    score = torch.rand(8, 32)
    mask = prune_mask(score, 0.9, "matrix", pattern)  # the sparsity argument is ignored
    for r in range(8):
        for g in range(0, 32, pattern.m):
            ranked = sorted((float(score[r, g + k]), k) for k in range(pattern.m))
            expected = {g + k for _, k in ranked[: pattern.m - pattern.n]}
            assert {g + k for k in range(pattern.m) if mask[r, g + k]} == expected


# -------------------------------------------------------------------------
# Magnitude and Wanda: masks from their scores
# -------------------------------------------------------------------------


@pytest.mark.parametrize("comparison", ["row", "matrix"])
def test_magnitude_ranks_absolute_weights(comparison: str) -> None:
    layer = make_layer()
    W = layer.weight.detach().clone()
    mask = MagnitudePruner(layer, comparison).prune(0.5)
    assert torch.equal(mask, BRUTE[comparison](W.abs(), 0.5))
    assert (layer.weight[mask] == 0).all() and torch.equal(layer.weight[~mask], W[~mask])


@pytest.mark.parametrize("comparison", ["row", "matrix"])
def test_wanda_mask_equals_weight_times_input_norm(comparison: str) -> None:
    layer = make_layer()
    W = layer.weight.detach().clone()
    X = correlated_inputs()
    mask = calibrate(WandaPruner(layer, comparison), X).prune(0.5)
    norms = X.reshape(-1, X.shape[-1]).double().norm(dim=0)
    assert torch.equal(mask, BRUTE[comparison](W.abs().double() * norms, 0.5))
    assert (layer.weight[mask] == 0).all() and torch.equal(layer.weight[~mask], W[~mask])


@pytest.mark.parametrize("comparison", ["row", "matrix"])
def test_wanda_batches_of_different_sizes_give_the_same_mask(comparison: str) -> None:
    X = correlated_inputs()
    whole = calibrate(WandaPruner(make_layer(), comparison), X)
    parts = calibrate(WandaPruner(make_layer(), comparison), X, [5, 11, 16])
    assert torch.equal(whole.prune(0.6), parts.prune(0.6))


def test_wanda_keeps_the_running_mean_over_sequences() -> None:
    X = correlated_inputs()
    wanda = calibrate(WandaPruner(make_layer()), X, [3, 29])
    assert wanda.nsamples == 32
    expected = X.reshape(-1, X.shape[-1]).pow(2).sum(dim=0) / 32
    torch.testing.assert_close(wanda.scaler_row, expected, rtol=1e-5, atol=0)


def test_two_dimensional_inputs_count_as_one_sequence() -> None:
    X = correlated_inputs(samples=2)
    wanda, sparsegpt = WandaPruner(make_layer()), SparseGPTPruner(make_layer())
    for pruner in (wanda, sparsegpt):
        for seq in X:
            pruner.add_batch(seq, pruner.layer(seq))
        assert pruner.nsamples == 2
    tokens = X.reshape(-1, X.shape[-1])
    torch.testing.assert_close(wanda.scaler_row, tokens.pow(2).sum(dim=0) / 2)
    torch.testing.assert_close(sparsegpt.H, tokens.T @ tokens, rtol=1e-5, atol=1e-3)


# -------------------------------------------------------------------------
# SparseGPT
# -------------------------------------------------------------------------


def test_sparsegpt_hessian_is_the_running_average() -> None:
    X = correlated_inputs()
    sparsegpt = calibrate(SparseGPTPruner(make_layer()), X, [7, 9, 16])
    tokens = X.reshape(-1, X.shape[-1]).double()
    expected = (2 / 32 * tokens.T @ tokens).float()
    torch.testing.assert_close(sparsegpt.H, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("target", [0.5, 0.6, "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(target: float | str) -> None:
    X = correlated_inputs()
    sparsity, pattern = (0.0, NMPattern.parse(target)) if isinstance(target, str) else (target, None)
    errors = {}
    for pruner_class, comparison in [(MagnitudePruner, "matrix"), (WandaPruner, "row"), (SparseGPTPruner, "row")]:
        layer = make_layer()
        W = layer.weight.detach().clone()
        calibrate(pruner_class(layer, comparison), X).prune(sparsity, pattern)
        errors[pruner_class.name] = output_error(W, layer.weight.detach(), X)
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8)])
def test_sparsegpt_lazy_block_updates_are_exact(pattern: NMPattern) -> None:
    """With N:M the mask and the update do not depend on the block size (lazy batching is exact)."""
    X = correlated_inputs()
    weights = []
    for blocksize in (64, 16, 8):
        layer = make_layer()
        calibrate(SparseGPTPruner(layer, blocksize=blocksize), X).prune(0.0, pattern)
        weights.append(layer.weight.detach())
    for W in weights[1:]:
        assert torch.equal(W == 0, weights[0] == 0)
        torch.testing.assert_close(W, weights[0], rtol=0, atol=1e-4)


def test_sparsegpt_at_zero_sparsity_leaves_the_weights_unchanged() -> None:
    layer = make_layer(cols=160)
    W = layer.weight.detach().clone()
    mask = calibrate(SparseGPTPruner(layer), correlated_inputs(cols=160)).prune(0.0)
    assert not mask.any()
    torch.testing.assert_close(layer.weight.detach(), W, rtol=0, atol=1e-6)


@pytest.mark.parametrize("blocksize", [128, 48])
def test_sparsegpt_prunes_a_fixed_count_in_each_column_block(blocksize: int) -> None:
    layer = make_layer(cols=160)
    sparsegpt = calibrate(SparseGPTPruner(layer, blocksize=blocksize), correlated_inputs(cols=160))
    mask = sparsegpt.prune(0.3)
    widths = [min(blocksize, 160 - start) for start in range(0, 160, blocksize)]
    assert int((layer.weight == 0).sum()) == int(mask.sum()) == sum(int(16 * w * 0.3) for w in widths)
    assert (layer.weight[mask] == 0).all()


@pytest.mark.parametrize("percdamp", [0.01, 0.0])
def test_sparsegpt_handles_a_dead_input_feature(percdamp: float) -> None:
    X = correlated_inputs()
    X[..., 5] = 0
    layer = make_layer()
    mask = calibrate(SparseGPTPruner(layer, percdamp=percdamp), X).prune(0.5)
    assert torch.isfinite(layer.weight).all()
    assert (layer.weight[:, 5] == 0).all()
    assert (layer.weight[mask] == 0).all()


def test_sparsegpt_writes_back_in_the_layer_dtype() -> None:
    layer = make_layer().to(torch.bfloat16)
    mask = calibrate(SparseGPTPruner(layer), correlated_inputs().to(torch.bfloat16)).prune(0.5)
    assert layer.weight.dtype == torch.bfloat16
    assert (layer.weight[mask] == 0).all() and torch.isfinite(layer.weight).all()


# -------------------------------------------------------------------------
# All pruners: N:M, measured sparsity, free, bad input
# -------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8)])
@pytest.mark.parametrize("pruner_class", PRUNERS)
def test_nm_pattern_holds_in_the_weights(pruner_class: type[LayerPruner], pattern: NMPattern) -> None:
    layer = make_layer()
    kwargs = {"blocksize": 32} if pruner_class is SparseGPTPruner else {}
    mask = calibrate(pruner_class(layer, **kwargs), correlated_inputs()).prune(0.0, pattern)
    assert (nm_zero_counts(layer.weight.detach(), pattern.m) == pattern.m - pattern.n).all()
    assert torch.equal(mask, layer.weight == 0)


@pytest.mark.parametrize("comparison", ["row", "matrix"])
@pytest.mark.parametrize("pruner_class", [MagnitudePruner, WandaPruner])
def test_measured_sparsity_is_the_requested_count(pruner_class: type[LayerPruner], comparison: str) -> None:
    layer = make_layer()
    calibrate(pruner_class(layer, comparison), correlated_inputs()).prune(0.3)
    zeros = layer.weight == 0
    if comparison == "row":
        assert (zeros.sum(dim=1) == int(64 * 0.3)).all()
    assert int(zeros.sum()) == (16 * int(64 * 0.3) if comparison == "row" else int(16 * 64 * 0.3))


@pytest.mark.parametrize("pruner_class", [WandaPruner, SparseGPTPruner])
def test_free_drops_the_statistics(pruner_class: type[LayerPruner]) -> None:
    pruner = calibrate(pruner_class(make_layer()), correlated_inputs())
    pruner.free()
    stats = pruner.scaler_row if pruner_class is WandaPruner else pruner.H
    assert stats.numel() == 0 and pruner.nsamples == 0


def test_magnitude_needs_no_inputs() -> None:
    assert not MagnitudePruner.needs_inputs
    assert WandaPruner.needs_inputs and SparseGPTPruner.needs_inputs
    assert [p.name for p in PRUNERS] == ["magnitude", "wanda", "sparsegpt"]


@pytest.mark.parametrize("text", ["x", "4:4", "0:4", "2-4", ""])
def test_bad_nm_patterns_are_rejected(text: str) -> None:
    with pytest.raises(EcoflapError):
        NMPattern.parse(text)


def test_nm_pattern_needs_n_below_m() -> None:
    with pytest.raises(EcoflapError, match="4:4"):
        NMPattern(4, 4)


@pytest.mark.parametrize("sparsity", [1.0, -0.1])
@pytest.mark.parametrize("pruner_class", PRUNERS)
def test_sparsity_out_of_range_is_rejected(pruner_class: type[LayerPruner], sparsity: float) -> None:
    layer = make_layer()
    W = layer.weight.detach().clone()
    pruner = calibrate(pruner_class(layer), correlated_inputs())
    with pytest.raises(EcoflapError, match="out of range"):
        pruner.prune(sparsity)
    assert torch.equal(layer.weight, W)
    with pytest.raises(EcoflapError):
        prune_mask(torch.rand(4, 8), sparsity, "row")


@pytest.mark.parametrize("pruner_class", PRUNERS)
def test_nm_needs_an_input_size_divisible_by_m(pruner_class: type[LayerPruner]) -> None:
    layer = make_layer(cols=30)
    W = layer.weight.detach().clone()
    pruner = calibrate(pruner_class(layer), correlated_inputs(cols=30))
    with pytest.raises(EcoflapError, match="divisible by 4"):
        pruner.prune(0.0, NMPattern(2, 4))
    assert torch.equal(layer.weight, W)
