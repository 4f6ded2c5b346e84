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
