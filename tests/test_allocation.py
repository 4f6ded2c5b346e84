"""The ECoFLaP allocation against its definition (ECOFLAP_SPEC.md section 2)."""

from __future__ import annotations

import json
import math
import random

import pytest
from test_owl import _keys

from ecoflap.core.allocation import AllocationRequest, LayerInfo, group_layers, group_scores, keep_counts, smooth_scores
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import ZO_SMOOTH_BLOCKS
from ecoflap.evaluation.results.method import method_label
from ecoflap.plugins.allocators import EcoflapAllocator, FromFileAllocator, UniformAllocator


def random_groups(seed: int, n: int = 12) -> tuple[dict[str, float], dict[str, int]]:
    rng = random.Random(seed)
    sizes = {f"g{i}": rng.randint(1_000, 50_000) for i in range(n)}
    scores = {g: rng.uniform(0.5, 2.0) * sizes[g] for g in sizes}
    return scores, sizes


def reference_loop(scores: dict[str, float], sizes: dict[str, int], p: float, cap: float) -> dict[str, int]:
    """The reference's loop as the spec states it (ceil shares; may overshoot K)."""
    total = sum(sizes.values())
    budget = math.floor(total * (1 - p))
    keep = {g: math.ceil(n * (1 - cap)) for g, n in sizes.items()}
    s = dict(scores)
    while sum(keep.values()) < budget:
        rest = budget - sum(keep.values())
        norm = sum(s.values())
        for g in keep:
            keep[g] += math.ceil(rest * s[g] / norm)
            if keep[g] >= sizes[g]:
                keep[g], s[g] = sizes[g], 0.0
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("p", "cap"), [(0.5, 0.6), (0.6, 0.7), (0.3, 0.9), (0.5, 0.5), (0.0, 0.1)])
def test_keeps_exactly_k_and_respects_the_cap(seed: int, p: float, cap: float) -> None:
    scores, sizes = random_groups(seed)
    keep = keep_counts(scores, sizes, p, cap)
    assert sum(keep.values()) == math.floor(sum(sizes.values()) * (1 - p) + 1e-9)
    for g, n in sizes.items():
        assert 0 <= keep[g] <= n
        if cap > p:  # with cap == target a group may miss the cap by < 1 weight of rounding
            assert 1 - keep[g] / n <= cap + 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_closed_form_without_saturation(seed: int) -> None:
    scores, sizes = random_groups(seed)
    p, cap = 0.5, 0.6
    keep = keep_counts(scores, sizes, p, cap)
    rho_bar = sum(scores.values()) / sum(sizes.values())
    for g, n in sizes.items():
        closed = cap - (cap - p) * (scores[g] / n) / rho_bar
        assert 1 - keep[g] / n == pytest.approx(closed, abs=2 / n)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_the_reference_loop_up_to_its_rounding(seed: int) -> None:
    scores, sizes = random_groups(seed)
    sizes["big"], scores["big"] = 2_000, 1e9  # saturates: its overflow is handed out again
    ours = keep_counts(scores, sizes, 0.6, 0.7)
    ref = reference_loop(scores, sizes, 0.6, 0.7)
    assert ours["big"] == ref["big"] == sizes["big"]
    assert all(abs(ours[g] - ref[g]) <= len(sizes) for g in sizes)
    assert sum(ref.values()) >= sum(ours.values())  # the reference overshoots, ours is exact


def test_a_saturated_group_is_dense_and_its_overflow_is_redistributed() -> None:
    sizes = {"a": 1000, "b": 1000, "c": 1000}
    keep = keep_counts({"a": 1e6, "b": 1.0, "c": 3.0}, sizes, 0.5, 0.9)
    assert keep["a"] == 1000
    assert sum(keep.values()) == 1500
    # b and c share the remaining 500 - 2 * 100 floor weights 1 : 3
    assert (keep["b"] - 100, keep["c"] - 100) == (75, 225)


def test_zero_scores_spread_the_budget_uniformly() -> None:
    keep = keep_counts({"a": 0.0, "b": 0.0}, {"a": 100, "b": 300}, 0.5, 0.8)
    assert keep == {"a": 50, "b": 150}


@pytest.mark.parametrize(("p", "cap"), [(1.0, 1.0), (-0.1, 0.5), (0.5, 0.4), (0.5, 1.2)])
def test_bad_targets_are_one_clear_error(p: float, cap: float) -> None:
    with pytest.raises(EcoflapError, match="sparsity"):
        keep_counts({"a": 1.0}, {"a": 10}, p, cap)


def layers() -> list[LayerInfo]:
    """Two towers: vision blocks hold small weights of low score, language blocks high."""
    infos = []
    for tower, blocks, size in (("vision", 3, 400), ("language", 4, 600)):
        for b in range(blocks):
            for lin in ("q", "k", "fc"):
                infos.append(LayerInfo(f"{tower}.{b}.{lin}", size, f"{tower}.{b}", tower))
    return infos


def scores_for(infos: list[LayerInfo]) -> dict[str, float]:
    return {la.name: (1.0 if la.tower == "vision" else 5.0) * la.size for la in infos}


def test_ecoflap_allocator_shares_one_budget_across_towers() -> None:
    infos = layers()
    request = AllocationRequest(infos, 0.5, 0.6, scores_for(infos), "block", "sum")
    allocation = EcoflapAllocator().allocate(request)
    total = sum(la.size for la in infos)
    assert allocation.kept() == total // 2
    vision = [allocation.sparsity[la.name] for la in infos if la.tower == "vision"]
    language = [allocation.sparsity[la.name] for la in infos if la.tower == "language"]
    assert min(vision) > max(language)  # the less important tower is pruned more
    assert max(vision) <= 0.6 + 1e-12
    assert len(set(allocation.groups.values())) == 7  # one group per block
    # layers of one block share its sparsity
    assert allocation.sparsity["vision.0.q"] == allocation.sparsity["vision.0.fc"]


def test_per_tower_budgets_keep_each_tower_at_the_target() -> None:
    infos = layers()
    request = AllocationRequest(infos, 0.5, 0.6, scores_for(infos), "block", "sum", per_tower=True)
    allocation = EcoflapAllocator().allocate(request)
    for tower in ("vision", "language"):
        kept = sum(allocation.keep[g] for g in {allocation.groups[la.name] for la in infos if la.tower == tower})
        assert kept == sum(la.size for la in infos if la.tower == tower) // 2


def test_avg_aggregation_divides_by_the_group_size() -> None:
    infos = [LayerInfo("a", 100, "a", "t"), LayerInfo("b", 900, "b", "t")]
    scores = {"a": 100.0, "b": 900.0}  # equal score per weight
    for aggregation, expect_equal in (("sum", True), ("avg", False)):
        request = AllocationRequest(infos, 0.5, 0.7, scores, "layer", aggregation)
        s = EcoflapAllocator().allocate(request).sparsity
        assert (s["a"] == pytest.approx(s["b"], abs=0.01)) is expect_equal


def smoothing_request(aggregation: str = "sum") -> AllocationRequest:
    """Tower a: three blocks of 10, 20, 10 weights with score densities 1, 4, 3; tower b: one block, density 9."""
    infos = [
        LayerInfo("a0.w", 10, "a0", "a"),
        LayerInfo("a1.w", 12, "a1", "a"),
        LayerInfo("a1.v", 8, "a1", "a"),
        LayerInfo("a2.w", 10, "a2", "a"),
        LayerInfo("b0.w", 30, "b0", "b"),
    ]
    scores = {"a0.w": 10.0, "a1.w": 50.0, "a1.v": 30.0, "a2.w": 30.0, "b0.w": 270.0}
    return AllocationRequest(infos, 0.5, 0.8, scores, "block", aggregation)


def test_score_smoothing_averages_densities_of_adjacent_blocks_within_a_tower() -> None:
    request = smoothing_request()
    groups, sizes = group_layers(request)
    smoothed = smooth_scores(request, groups, sizes, group_scores(request, groups, sizes), 3)
    # densities 1, 4, 3 -> window means 2.5, 8/3, 3.5, times each block's size; b0 alone in its tower: unchanged
    assert smoothed == pytest.approx({"a0": 25.0, "a1": 20 * 8 / 3, "a2": 35.0, "b0": 270.0})
    assert smooth_scores(request, groups, sizes, group_scores(request, groups, sizes), 1)["a1"] == 80.0
    wide = smooth_scores(request, groups, sizes, group_scores(request, groups, sizes), 5)
    assert wide["a0"] == pytest.approx(10 * 8 / 3)  # the window shrinks at the ends: a0..a2, never b0
    avg = smoothing_request("avg")
    groups, sizes = group_layers(avg)
    assert smooth_scores(avg, groups, sizes, group_scores(avg, groups, sizes), 3)["a0"] == pytest.approx(2.5)


def test_the_ecoflap_allocator_allocates_the_smoothed_scores() -> None:
    request = smoothing_request()
    groups, sizes = group_layers(request)
    expected = keep_counts(
        smooth_scores(request, groups, sizes, group_scores(request, groups, sizes), 3), sizes, 0.5, 0.8
    )
    assert EcoflapAllocator(smooth_blocks=3).allocate(request).keep == expected
    assert EcoflapAllocator().allocate(request).keep != expected  # the smoothing moves weights between blocks
    with pytest.raises(EcoflapError, match="odd"):
        EcoflapAllocator(smooth_blocks=2).allocate(request)


def test_uniform_and_from_file(tmp_path) -> None:
    infos = layers()
    uniform = UniformAllocator().allocate(AllocationRequest(infos, 0.4, 0.5))
    assert set(uniform.sparsity.values()) == {0.4}
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"sparsity": {la.name: 0.25 for la in infos}}))
    from_file = FromFileAllocator(path=str(path)).allocate(AllocationRequest(infos, 0.5, 0.6))
    assert set(from_file.sparsity.values()) == {0.25}
    path.write_text(json.dumps({"nope": 0.5}))
    with pytest.raises(EcoflapError, match="does not match the model"):
        FromFileAllocator(path=str(path)).allocate(AllocationRequest(infos, 0.5, 0.6))
    with pytest.raises(EcoflapError, match="does not exist"):
        FromFileAllocator(path=str(tmp_path / "missing.json")).allocate(AllocationRequest(infos, 0.5, 0.6))


def test_the_smoothing_window_is_in_the_identity_and_the_allocation_key_only() -> None:
    smoothed = PruneConfig.build(smooth_blocks=3).method()
    assert smoothed["allocator_options"] == {"smooth_blocks": 3}
    assert method_label(smoothed, 0.5) == "wanda / ecoflap zeroth-order smooth_blocks=3"
    plain, smooth = _keys(smooth_blocks=1), _keys(smooth_blocks=3)
    assert smooth["scores"] == plain["scores"] and smooth["allocation"] != plain["allocation"]
    with pytest.raises(EcoflapError, match="smooth_blocks.*odd"):
        PruneConfig.build(smooth_blocks=4)


def test_zeroth_order_smooths_by_default_and_runs_before_keep_their_keys() -> None:
    """The default window is zeroth-order's (estimated scores); first-order's scores are left as they are, and a
    window of 1 writes no option: the identity of the runs recorded before the smoothing."""
    default = PruneConfig.build().method()
    assert default["allocator_options"] == {"smooth_blocks": ZO_SMOOTH_BLOCKS} and ZO_SMOOTH_BLOCKS > 1
    assert "allocator_options" not in PruneConfig.build(scorer="first-order").method()
    assert "allocator_options" not in PruneConfig.build(smooth_blocks=1).method()
    assert _keys() == _keys(smooth_blocks=ZO_SMOOTH_BLOCKS) != _keys(smooth_blocks=1)
    assert method_label(default, 0.5) == "wanda / ecoflap zeroth-order"
    before = {k: v for k, v in default.items() if k != "allocator_options"}  # a zeroth-order run of before
    assert method_label(before, 0.5) == "wanda / ecoflap zeroth-order smooth_blocks=1"
    first = PruneConfig.build(scorer="first-order", smooth_blocks=ZO_SMOOTH_BLOCKS).method()
    assert method_label(first, 0.5).endswith(f"first-order smooth_blocks={ZO_SMOOTH_BLOCKS}")
