"""OWL (--allocator owl): outlier ratios and block sparsities against the reference's formula, computed here
the reference's way (luuyin/OWL ``prune_wanda_outlier``: Wanda's running mean per sample, ``check_outlier_mean``
in percent, min-max to [0, 2 lambda], minus the plain mean, plus 1 - target), on a tiny random model and on
random block statistics; exact integer budgets, the cap, the keys and the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecoflap.core.adapters import linears, split_batch
from ecoflap.core.allocation import AllocationRequest, LayerInfo
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.job import resolve_methods
from ecoflap.pipelines.common import registries
from ecoflap.pipelines.run_config import RunConfig
from ecoflap.pipelines.steps import allocation_key, implementations, scores_key
from ecoflap.plugins.outlier_allocators import OwlAllocator, WandaMetricScorer, outlier_ratio

REGISTRIES = registries(False)
ECOFLAP = [sys.executable, "-m", "ecoflap.pipelines.cli"]


# ---- the reference, as its code does it ----------------------------------------------------------------
def reference_wanda_metrics(adapter, batch) -> dict[str, list[torch.Tensor]]:
    """Per block, |W| * sqrt(scaler_row) of each linear, scaler_row as Wanda's WrappedGPT keeps it (one sample
    at a time, running mean); the dense model's inputs (one full forward pass per sample)."""
    scaler = {n: torch.zeros(lin.in_features, dtype=torch.float64) for n, lin in linears(adapter.towers()).items()}
    seen = dict.fromkeys(scaler, 0)

    def hook(name):
        def add_batch(module, args, output):
            inp = args[0].reshape(-1, args[0].shape[-1]).double()
            scaler[name] *= seen[name] / (seen[name] + 1)
            seen[name] += 1
            scaler[name] += torch.norm(inp, p=2, dim=0) ** 2 / seen[name]

        return add_batch

    handles = [lin.register_forward_hook(hook(n)) for n, lin in linears(adapter.towers()).items()]
    with torch.no_grad():
        for sample in split_batch(batch, 1):
            adapter.forward(sample)
    for h in handles:
        h.remove()
    return {
        block.name: [lin.weight.detach().abs().double() * scaler[n].sqrt() for n, lin in block.linears.items()]
        for tower in adapter.towers()
        for block in tower.blocks
    }


def reference_outlier_ratio(metrics: list[torch.Tensor], hyper_m: float) -> float:
    """``check_outlier_mean``: percent of the block's metric above Hyper_m times its mean."""
    w = torch.cat([m.flatten() for m in metrics])
    return float((w > torch.mean(w) * hyper_m).sum()) / w.numel() * 100


def reference_owl_sparsity(all_layer_ratio: list[float], lamda: float, sparsity_ratio: float) -> np.ndarray:
    ratio = np.array(all_layer_ratio)
    ratio = (ratio - ratio.min()) * (1 / (ratio.max() - ratio.min()) * lamda * 2)
    ratio = ratio - np.mean(ratio) + (1 - sparsity_ratio)
    return 1 - ratio


def block_request(sizes: dict[str, int], values: dict[str, float], target: float, cap: float) -> AllocationRequest:
    """Two linears per block (sizes split unevenly), each carrying its block's statistic."""
    layers = [
        LayerInfo(f"{b}.{part}", size, b, "t")
        for b, n in sizes.items()
        for part, size in (("q", n // 3), ("o", n - n // 3))
    ]
    return AllocationRequest(layers, target, cap, {la.name: values[la.block] for la in layers})


def random_blocks(
    seed: int, count: int, values: tuple[float, float], spreads: tuple[float, float]
) -> tuple[list[str], dict[str, float], float, float]:
    """Block names, a random statistic for each, a random target and a random spread (lambda or alpha)."""
    rng = np.random.default_rng(seed)
    names = [f"b{i}" for i in range(count)]
    statistics = dict(zip(names, (float(v) for v in rng.uniform(*values, count)), strict=True))
    return names, statistics, float(rng.uniform(0.3, 0.7)), float(rng.uniform(*spreads))


# ---- the statistics and the sparsities on a tiny model -------------------------------------------------
def test_outlier_ratios_and_sparsities_match_the_reference_on_a_tiny_model(make_adapter, toy_text) -> None:
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    towers = adapter.towers()
    blocks = [b for t in towers for b in t.blocks]
    reference = reference_wanda_metrics(adapter, batch)
    for hyper_m in (2.0, 5.0):
        ours = WandaMetricScorer(statistic="outlier-ratio", owl_m=hyper_m, micro_batch=3).score(adapter, towers, batch)
        expected = [reference_outlier_ratio(reference[b.name], hyper_m) for b in blocks]
        for block, value in zip(blocks, expected, strict=True):
            one_entry = 100 / sum(lin.weight.numel() for lin in block.linears.values())
            assert [ours[n] * 100 for n in block.linears] == [pytest.approx(value, abs=one_entry)] * len(block.linears)
    assert len(set(expected)) == len(blocks)  # the blocks differ: the mapping below is not the trivial one

    ratios = WandaMetricScorer(statistic="outlier-ratio", owl_m=5.0).score(adapter, towers, batch)
    request = AllocationRequest(
        [LayerInfo(n, lin.weight.numel(), b.name, b.tower) for b in blocks for n, lin in b.linears.items()],
        0.7,
        1.0,
        ratios,
    )
    allocation = OwlAllocator(owl_lambda=0.08).allocate(request)
    want = reference_owl_sparsity(expected, 0.08, 0.7)
    for block, sparsity in zip(blocks, want, strict=True):
        n = allocation.size[block.name]
        assert 1 - allocation.keep[block.name] / n == pytest.approx(sparsity, abs=1 / n + 1e-9)
        assert {allocation.sparsity[name] for name in block.linears} == {1 - allocation.keep[block.name] / n}
    assert max(want) - min(want) == pytest.approx(0.16)
    assert allocation.kept() == math.floor(sum(allocation.size.values()) * (1 - 0.7))


def test_the_statistic_follows_the_block_inputs_through_the_dense_blocks(make_adapter, toy_text) -> None:
    """The norms come from each block's own dense inputs: scaling the inputs of block 1 (its input norm) changes
    the inputs that block 2 sees, so a pass that fed every block the embeddings would disagree."""
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    blocks = [b for t in adapter.towers() for b in t.blocks]
    scorer = WandaMetricScorer(statistic="outlier-ratio", owl_m=2.0)
    before = scorer.score(adapter, adapter.towers(), batch)
    with torch.no_grad():
        next(iter(blocks[0].linears.values())).weight.mul_(3.0)  # changes block 0's outputs, hence later inputs
    after = scorer.score(adapter, adapter.towers(), batch)
    later = [next(iter(b.linears)) for b in blocks[1:]]
    assert any(before[n] != after[n] for n in later)


def test_outlier_ratio_counts_strictly_above_m_times_the_mean() -> None:
    metric = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 6.0])  # mean 2: M = 3 puts the bar at exactly 6
    assert outlier_ratio(metric, 3.0) == 0.0
    assert outlier_ratio(metric, 2.5) == pytest.approx(1 / 6)
    assert outlier_ratio(metric, 0.5) == pytest.approx(2 / 6)  # the four at the bar (1) are not above it


# ---- the allocator on random statistics ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_equal_blocks_get_the_reference_sparsities_within_one_weight(seed: int) -> None:
    names, ratios, target, lam = random_blocks(seed, 7, (0.1, 9.0), (0.02, 0.12))
    request = block_request(dict.fromkeys(names, 3001), ratios, target, 1.0)
    allocation = OwlAllocator(owl_lambda=lam).allocate(request)
    want = reference_owl_sparsity([ratios[b] for b in names], lam, target)
    got = [1 - allocation.keep[b] / 3001 for b in names]
    assert got == pytest.approx(list(want), abs=1 / 3001 + 1e-12)
    assert allocation.kept() == math.floor(7 * 3001 * (1 - target))
    assert all(isinstance(k, int) for k in allocation.keep.values())


@pytest.mark.parametrize("seed", range(5))
def test_unequal_blocks_keep_the_reference_differences_and_the_exact_budget(seed: int) -> None:
    """The reference's plain mean misses the target when blocks differ in size; the common shift keeps its
    differences between blocks and meets the parameter budget exactly."""
    rng = np.random.default_rng(seed)
    sizes = {f"b{i}": int(rng.integers(500, 5000)) for i in range(6)}
    ratios = {b: float(rng.uniform(0.0, 5.0)) for b in sizes}
    request = block_request(sizes, ratios, 0.6, 1.0)
    allocation = OwlAllocator(owl_lambda=0.08).allocate(request)
    want = reference_owl_sparsity(list(ratios.values()), 0.08, 0.6)
    got = np.array([1 - allocation.keep[b] / sizes[b] for b in sizes])
    shift = got - want
    assert shift.max() - shift.min() <= 2 / min(sizes.values()) + 1e-12  # one common shift, to rounding
    assert allocation.kept() == math.floor(sum(sizes.values()) * (1 - 0.6))
    reference_kept = sum(n * (1 - s) for n, s in zip(sizes.values(), want, strict=True))
    assert abs(reference_kept - allocation.kept()) > 1  # the reference's own mean would have missed the budget


def test_the_cap_holds_and_the_overflow_goes_to_the_other_blocks() -> None:
    sizes = {f"b{i}": 1000 for i in range(5)}
    ratios = {"b0": 0.0, "b1": 1.0, "b2": 4.0, "b3": 4.5, "b4": 5.0}  # b0 would be pruned to ~0.5 + 0.13
    request = block_request(sizes, ratios, 0.5, 0.55)
    allocation = OwlAllocator(owl_lambda=0.08).allocate(request)
    sparsity = {b: 1 - allocation.keep[b] / 1000 for b in sizes}
    assert max(sparsity.values()) <= 0.55
    assert sparsity["b0"] == pytest.approx(0.55) and sparsity["b1"] == pytest.approx(0.55)
    assert allocation.kept() == 2500
    assert sparsity["b2"] - sparsity["b4"] == pytest.approx(0.16 * (5 - 4) / 5, abs=2e-3)  # differences kept


def test_equal_ratios_give_the_uniform_target_and_per_tower_budgets_hold() -> None:
    sizes = {"b0": 900, "b1": 1200}
    allocation = OwlAllocator(owl_lambda=0.08).allocate(block_request(sizes, {"b0": 2.0, "b1": 2.0}, 0.5, 1.0))
    assert allocation.keep == {"b0": 450, "b1": 600}
    layers = [LayerInfo(f"{t}{i}", 1000 + 7 * i, f"{t}{i}", t) for t in "vl" for i in range(3)]
    scores = {la.name: float(i) for i, la in enumerate(layers)}
    request = AllocationRequest(layers, 0.5, 1.0, scores, per_tower=True)
    allocation = OwlAllocator(owl_lambda=0.08).allocate(request)
    for tower in "vl":
        members = [la for la in layers if la.tower == tower]
        assert sum(allocation.keep[la.block] for la in members) == math.floor(sum(la.size for la in members) * 0.5)


def test_misuse_is_one_clear_error() -> None:
    sizes = {"b0": 900, "b1": 1200}
    request = block_request(sizes, {"b0": 1.0, "b1": 2.0}, 0.5, 1.0)
    request.granularity = "layer"
    with pytest.raises(EcoflapError, match="one sparsity per block: use --granularity block"):
        OwlAllocator(owl_lambda=0.08).allocate(request)
    request = block_request(sizes, {"b0": 1.0, "b1": 2.0}, 0.5, 1.0)
    request.scores["b0.q"] = 3.0
    with pytest.raises(EcoflapError, match="carry different statistics"):
        OwlAllocator(owl_lambda=0.08).allocate(request)
    with pytest.raises(EcoflapError, match="owl allocator sets one sparsity per block: use granularity block"):
        PruneConfig.build(allocator="owl", granularity="layer")  # before any model loads
    with pytest.raises(EcoflapError, match="block statistics of --allocator owl or dlp"):
        resolve_methods(REGISTRIES, PruneConfig.build(model="tiny-llama", scorer="wanda-metric"))


# ---- identity and keys -------------------------------------------------------------------------------------
def _keys(**settings) -> dict[str, str]:
    config = RunConfig.build(model="tiny-llama", **settings)
    identity = {"model": config.model, "weights_hash": "0" * 64, "implementations": implementations(config, REGISTRIES)}
    scores = {"key": scores_key(config, identity)}
    return {"scores": scores["key"], "allocation": allocation_key(config, identity, scores)}


def test_m_and_lambda_are_in_the_method_identity_and_the_keys() -> None:
    base = PruneConfig.build(allocator="owl")
    assert base.method()["scorer"] == "wanda-metric" and base.method()["allocator_options"] == {"owl_lambda": 0.08}
    assert base.method()["scorer_options"] == {"statistic": "outlier-ratio", "owl_m": 5.0}
    assert PruneConfig.build(allocator="owl", owl_m=3).method() != base.method()
    assert PruneConfig.build(allocator="owl", owl_lambda=0.1).method() != base.method()
    assert base.cap == 1.0 and PruneConfig.build(allocator="owl", max_sparsity=0.6).cap == 0.6
    owl = _keys(allocator="owl")
    other_m, other_lambda = _keys(allocator="owl", owl_m=3), _keys(allocator="owl", owl_lambda=0.1)
    assert other_m["scores"] != owl["scores"] and other_m["allocation"] != owl["allocation"]
    assert other_lambda["scores"] == owl["scores"] and other_lambda["allocation"] != owl["allocation"]
    assert _keys(allocator="owl", scorer="first-order") == owl  # --scorer is not what owl reads
    ecoflap = PruneConfig.build(scorer="first-order")
    assert "allocator_options" not in ecoflap.method()  # the keys of the other allocators are those of before
    assert _keys(owl_m=3, owl_lambda=0.2) == _keys()


# ---- the command line ------------------------------------------------------------------------------------------
def prune_cli(tmp_path: Path, corpus: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ecoflap prune`` on tiny-llama in a fresh process, with its own run cache."""
    env = {"OMP_NUM_THREADS": "1", "ECOFLAP_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    env |= {"PYTHONPATH": os.environ["PYTHONPATH"], "ECOFLAP_RUN_CACHE": str(tmp_path / "cache")}
    settings = ["--model", "tiny-llama", "--corpus", str(corpus), "--nsamples", "4", "--seqlen", "32"]
    command = [*ECOFLAP, "prune", *settings, "--score-nsamples", "4", "--score-seqlen", "32", "--no-eval", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # a CLI run in a fresh process: minutes on two cores
def test_ecoflap_prune_with_owl(tmp_path: Path, toy_corpus: Path) -> None:
    out = tmp_path / "owl"
    proc = prune_cli(tmp_path, toy_corpus, "--allocator", "owl", "--owl-m", "2", "--sparsity", "0.6", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert abs(report["measured_sparsity"] - 0.6) < 0.02
    assert report["method"]["scorer"] == "wanda-metric" and report["method"]["allocator_options"]["owl_lambda"] == 0.08
    blocks = {v["allocated"] for v in report["per_block"].values()}
    assert len(blocks) == 4 and max(blocks) - min(blocks) == pytest.approx(0.16, abs=0.01)
