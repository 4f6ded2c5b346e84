"""benchmarks/zo_distance.py's measures: parameter-weighted block sparsity and the mean distance per tower."""

from __future__ import annotations

import pytest
import zo_distance

from ecoflap.core.allocation import LayerInfo

LAYERS = [
    LayerInfo("v.0.a", 100, "v.0", "vision"),
    LayerInfo("v.0.b", 300, "v.0", "vision"),
    LayerInfo("l.0.a", 50, "l.0", "language"),
    LayerInfo("l.1.a", 50, "l.1", "language"),
]


def test_block_sparsity_is_weighted_by_parameters() -> None:
    blocks = zo_distance.block_sparsity({"v.0.a": 0.2, "v.0.b": 0.6, "l.0.a": 0.1, "l.1.a": 0.3}, LAYERS)
    assert blocks == pytest.approx({"v.0": 0.5, "l.0": 0.1, "l.1": 0.3})  # (0.2 * 100 + 0.6 * 300) / 400


def test_distance_is_the_mean_absolute_block_difference_within_one_tower() -> None:
    ours, reference = {"v.0": 0.5, "l.0": 0.1, "l.1": 0.3}, {"v.0": 0.4, "l.0": 0.2, "l.1": 0.2}
    assert zo_distance.distance(ours, reference, LAYERS, "language") == pytest.approx(0.1)
    assert zo_distance.distance(ours, reference, LAYERS, "vision") == pytest.approx(0.1)
    assert zo_distance.distance(reference, reference, LAYERS, "language") == 0.0


def test_expected_first_order_is_first_orders_own_score_summed_over_samples(make_adapter, toy_text) -> None:
    """--expected's check row: per-sample sum |W g_b|, summed, is first-order's score (|W| mean_b |g_b|) times the
    samples; weight-scaled's limit is another score (not first-order's renamed)."""
    import torch

    from ecoflap.core.scoring import first_order_scores

    adapter = make_adapter("tiny-opt", torch.float64)
    towers = adapter.towers()
    batch = adapter.calibration_batch([toy_text], 3, 16, seed=0)
    limits = zo_distance.expected_scores(adapter, towers, batch)
    first = first_order_scores(adapter, towers, batch, micro_batch=1)
    summed = {n: 3 * v for n, v in first.items()}
    assert limits["first-order"] == pytest.approx(summed, rel=1e-6)  # first-order accumulates in fp32
    ratios = {round(limits["weight-scaled"][n] / first[n], 6) for n in first}
    assert len(ratios) > 1
