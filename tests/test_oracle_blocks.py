"""The block allocations that benchmarks/oracle_blocks.py compares keep first-order's budget and tower split."""

from __future__ import annotations

import oracle_blocks
import pytest


def allocation(language: list[float], vision: float = 0.4) -> list[dict]:
    layers = [{"layer": f"vision.b{i}.q", "tower": "vision", "block": f"vision.b{i}", "params": 100, "target": vision}
              for i in range(2)]  # fmt: skip
    for i, target in enumerate(language):
        for part, params in (("attn", 30), ("mlp", 70)):
            layers.append({"layer": f"language.b{i}.{part}", "tower": "language", "block": f"language.b{i}",
                           "params": params * (i + 1), "target": target})  # fmt: skip
    return layers


def test_every_variant_keeps_the_language_tower_mean_and_the_vision_blocks() -> None:
    reference, zeroth = allocation([0.1, 0.2, 0.3, 0.4]), allocation([0.5, 0.1, 0.1, 0.2])
    sizes = oracle_blocks.block_params(reference, "language")
    mean = oracle_blocks.weighted_mean(oracle_blocks.block_sparsity(reference, "language"), sizes)
    found = oracle_blocks.variants(reference, zeroth, jitter=0.05, draws=3)
    assert set(found) == {"first-order", "zeroth-order", "flat", "reversed", "jitter 0.05 #0", "jitter 0.05 #1",
                          "jitter 0.05 #2"}  # fmt: skip
    for name, language in found.items():
        assert oracle_blocks.weighted_mean(language, sizes) == pytest.approx(mean), name
        table = oracle_blocks.layer_table(reference, language)
        assert table["vision.b0.q"] == 0.4 and table["language.b2.attn"] == table["language.b2.mlp"] == language[
            "language.b2"]  # fmt: skip
    assert found["first-order"] == {"language.b0": 0.1, "language.b1": 0.2, "language.b2": 0.3, "language.b3": 0.4}
    assert list(found["reversed"].values()) != list(found["first-order"].values())
    assert found["jitter 0.05 #0"] != found["jitter 0.05 #1"]  # a draw per seed
    assert oracle_blocks.variants(reference, zeroth, 0.05, 1)["jitter 0.05 #0"] == found["jitter 0.05 #0"]


def test_recentre_clips_into_range_and_still_meets_the_mean() -> None:
    values, sizes = {"a": 0.95, "b": 0.0}, {"a": 1, "b": 1}
    moved = oracle_blocks.recentre(values, sizes, 0.6)
    assert max(moved.values()) <= 0.99 and min(moved.values()) >= 0.0
    assert oracle_blocks.weighted_mean(moved, sizes) == pytest.approx(0.6)
