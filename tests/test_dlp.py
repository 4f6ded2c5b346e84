"""DLP (--allocator dlp): block unimportance and sparsities against the reference's formula, computed here the
reference's way (ironartisan/DLP ``get_dlp_ratios``: U_l = |median (or mean) of the block's Wanda metric|,
I_l = 1 - U_l / sum U, min-max to [0, 2 alpha], minus the plain mean, plus 1 - target), on a tiny random model
and on random statistics; exact integer budgets, the cap, the keys and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_owl import _keys, block_request, prune_cli, random_blocks, reference_wanda_metrics

from ecoflap.core.allocation import AllocationRequest, LayerInfo
from ecoflap.core.config import PruneConfig
from ecoflap.plugins.outlier_allocators import DlpAllocator, WandaMetricScorer


def reference_dlp_sparsity(layer_score: list[float], alpha: float, sparsity_ratio: float) -> np.ndarray:
    total_conn = sum(layer_score)
    imp_ratios = torch.tensor([1 - layer / total_conn for layer in layer_score], dtype=torch.float64)
    scaled = (imp_ratios - imp_ratios.min()) * (1 / (imp_ratios.max() - imp_ratios.min()) * alpha * 2)
    return 1 - (scaled - torch.mean(scaled) + (1 - sparsity_ratio)).numpy()


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_unimportance_and_sparsities_match_the_reference_on_a_tiny_model(make_adapter, toy_text, statistic) -> None:
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    towers = adapter.towers()
    blocks = [b for t in towers for b in t.blocks]
    reduce = torch.median if statistic == "median" else torch.mean
    reference = reference_wanda_metrics(adapter, batch)
    expected = [abs(float(reduce(torch.cat([m.flatten() for m in reference[b.name]])))) for b in blocks]
    ours = WandaMetricScorer(statistic=statistic, micro_batch=3).score(adapter, towers, batch)
    values = [ours[next(iter(b.linears))] for b in blocks]
    # Wanda's running mean divides every squared norm by the samples: one factor, gone in U_l / sum U
    shares = np.array(values) / sum(values)
    assert shares == pytest.approx(np.array(expected) / sum(expected), rel=1e-5)
    assert all(ours[n] == ours[next(iter(b.linears))] for b in blocks for n in b.linears)

    layers = [LayerInfo(n, lin.weight.numel(), b.name, b.tower) for b in blocks for n, lin in b.linears.items()]
    allocation = DlpAllocator(dlp_alpha=0.15).allocate(AllocationRequest(layers, 0.7, 1.0, ours))
    want = reference_dlp_sparsity(expected, 0.15, 0.7)
    for block, sparsity in zip(blocks, want, strict=True):
        n = allocation.size[block.name]
        assert 1 - allocation.keep[block.name] / n == pytest.approx(sparsity, abs=1 / n + 1e-9)
    assert max(want) - min(want) == pytest.approx(0.3)
    assert allocation.kept() == math.floor(sum(allocation.size.values()) * 0.3)
    higher = int(np.argmax(expected))  # the block with the largest metric is the least important: most pruned
    assert allocation.sparsity[next(iter(blocks[higher].linears))] == pytest.approx(max(want), abs=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_equal_blocks_get_the_reference_sparsities_within_one_weight(seed: int) -> None:
    names, medians, target, alpha = random_blocks(seed, 9, (0.01, 2.0), (0.02, 0.2))
    allocation = DlpAllocator(dlp_alpha=alpha).allocate(block_request(dict.fromkeys(names, 2003), medians, target, 1.0))
    want = reference_dlp_sparsity([medians[b] for b in names], alpha, target)
    assert [1 - allocation.keep[b] / 2003 for b in names] == pytest.approx(list(want), abs=1 / 2003 + 1e-12)
    assert allocation.kept() == math.floor(9 * 2003 * (1 - target))


@pytest.mark.parametrize("seed", range(5))
def test_unequal_blocks_and_the_cap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = {f"b{i}": int(rng.integers(700, 4000)) for i in range(6)}
    medians = {b: float(rng.uniform(0.1, 1.0)) for b in sizes}
    free = DlpAllocator(dlp_alpha=0.15).allocate(block_request(sizes, medians, 0.5, 1.0))
    want = reference_dlp_sparsity(list(medians.values()), 0.15, 0.5)
    shift = np.array([1 - free.keep[b] / n for b, n in sizes.items()]) - want
    assert shift.max() - shift.min() <= 2 / min(sizes.values()) + 1e-12  # the reference's differences, one shift
    assert free.kept() == math.floor(sum(sizes.values()) * 0.5)
    capped = DlpAllocator(dlp_alpha=0.15).allocate(block_request(sizes, medians, 0.5, 0.58))
    sparsity = {b: 1 - capped.keep[b] / n for b, n in sizes.items()}
    assert max(sparsity.values()) <= 0.58 and capped.kept() == free.kept()
    assert sparsity[max(medians, key=medians.get)] == pytest.approx(0.58, abs=1 / min(sizes.values()))


def test_alpha_and_the_statistic_are_in_the_identity_and_the_keys() -> None:
    base = PruneConfig.build(allocator="dlp")
    assert base.method()["allocator_options"] == {"dlp_alpha": 0.15}
    assert base.method()["scorer"] == "wanda-metric" and base.method()["scorer_options"] == {"statistic": "median"}
    dlp = _keys(allocator="dlp")
    mean, alpha = _keys(allocator="dlp", dlp_statistic="mean"), _keys(allocator="dlp", dlp_alpha=0.1)
    assert mean["scores"] != dlp["scores"] and mean["allocation"] != dlp["allocation"]
    assert alpha["scores"] == dlp["scores"] and alpha["allocation"] != dlp["allocation"]
    owl = _keys(allocator="owl")
    assert owl["scores"] != dlp["scores"]  # the same scorer, another statistic


@pytest.mark.slow  # a CLI run in a fresh process: minutes on two cores
def test_ecoflap_prune_with_dlp(tmp_path: Path, toy_corpus: Path) -> None:
    out = tmp_path / "dlp"
    proc = prune_cli(tmp_path, toy_corpus, "--allocator", "dlp", "--sparsity", "0.5", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert abs(report["measured_sparsity"] - 0.5) < 0.02
    assert report["method"]["allocator_options"] == {"dlp_alpha": 0.15} and report["max_sparsity"] == 1.0
    blocks = {v["allocated"] for v in report["per_block"].values()}
    assert len(blocks) == 4 and max(blocks) - min(blocks) == pytest.approx(0.3, abs=0.01)
