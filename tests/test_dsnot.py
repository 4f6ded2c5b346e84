"""DSnoT (prune-and-grow after another pruner's mask) against a plain re-implementation of the reference's loop;
--refine in the fine step, the method identity, the cache keys and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_plugins import ecoflap, toy_corpus
from test_pruners import brute_matrix_mask, calibrate, make_layer, output_error
from test_step_keys import _keys, _plugins

from ecoflap.core.compress import compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.job import resolve_methods
from ecoflap.core.plugins import load_plugins
from ecoflap.core.pruning import NMPattern
from ecoflap.pipelines.run_config import RunConfig
from ecoflap.plugins.dsnot import DSnoTRefiner, DSnoTSettings, InputStatistics, dsnot_mask
from ecoflap.plugins.pruners import WandaPruner

REGISTRIES = load_plugins()


# -------------------------------------------------------------------------
# A plain re-implementation of the reference's loop (zyxxmu/DSnoT lib/prune.py), one row at a time
# -------------------------------------------------------------------------


def reference_row(
    w: list[float], pruned: list[bool], stats: dict[str, list[float]], m: int | None, settings: DSnoTSettings
) -> list[bool]:
    cols = range(len(w))
    contribution = [w[j] * stats["sum_row"][j] for j in cols]
    wanda = [abs(w[j]) * math.sqrt(stats["scaler_row"][j]) for j in cols]
    growth = [contribution[j] / stats["var"][j] ** settings.pow_of_var for j in cols]
    grow_down = sorted((growth[j], j) for j in cols if pruned[j] and growth[j] < 0)
    grow_up = sorted((-growth[j], -j) for j in cols if pruned[j] and growth[j] > 0)  # from the end of a sort
    grow_up = [(g, -j) for g, j in grow_up]
    prune_down = sorted((wanda[j], j) for j in cols if not pruned[j] and contribution[j] < 0)
    prune_up = sorted((wanda[j], j) for j in cols if not pruned[j] and contribution[j] > 0)
    kept_at_start = [not p for p in pruned]
    mask = list(pruned)
    error = sum(contribution[j] for j in cols if pruned[j])
    sign = math.copysign(1, error) if error else 0
    for _ in range(settings.max_cycles):
        if abs(error) <= settings.update_threshold:
            break
        grow_list = grow_up if error > 0 else grow_down
        if not grow_list:
            break
        grow = grow_list.pop(0)[1]
        if m is None:
            prune_list = prune_up if error < 0 else prune_down
            if not prune_list:
                break
            prune = prune_list.pop(0)[1]
        else:
            start = grow - grow % m
            group = [(wanda[j], j) for j in range(start, start + m) if kept_at_start[j] and not mask[j]]
            if not group:
                break
            prune = min(group)[1]
        after = error + contribution[prune] - contribution[grow]
        if m is not None and (math.copysign(1, after) if after else 0) != sign:
            break
        mask[prune], mask[grow], error = True, False, after
    return mask


def reference_mask(W: torch.Tensor, mask: torch.Tensor, stats: InputStatistics, m: int | None) -> torch.Tensor:
    lists = {k: getattr(stats, k).tolist() for k in ("sum_row", "scaler_row", "var")}
    rows = [reference_row(W[i].tolist(), mask[i].tolist(), lists, m, DSnoTSettings()) for i in range(W.shape[0])]
    return torch.tensor(rows)


# -------------------------------------------------------------------------
# Small inputs: features with means of their own, as activations have
# -------------------------------------------------------------------------


def shifted_inputs(samples: int = 8, tokens: int = 16, cols: int = 32, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(cols, generator=gen)
    scale = torch.exp(torch.randn(cols, generator=gen) * 0.5)
    return mean + scale * torch.randn(samples, tokens, cols, generator=gen)


def wanda_then_dsnot(rows: int, cols: int, seed: int, sparsity: float, pattern=None, comparison: str = "row"):
    """The layer, its inputs, the Wanda mask and the refiner fed with the same inputs (weights still dense)."""
    layer = make_layer(rows, cols, seed=seed)
    X = shifted_inputs(cols=cols, seed=seed + 100)
    refiner = calibrate(DSnoTRefiner(layer), X, splits=[3, 5])
    dense = layer.weight.detach().clone()
    mask = calibrate(WandaPruner(layer, comparison), X, splits=[3, 5]).prune(sparsity, pattern)
    return layer, X, dense, mask, refiner


@pytest.mark.parametrize(("pattern", "comparison"), [(None, "row"), (None, "matrix"), (NMPattern(2, 4), "row")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_refined_mask_is_the_reference_loop_s(pattern, comparison: str, seed: int) -> None:
    layer, X, dense, mask, refiner = wanda_then_dsnot(16, 32, seed, 0.5, pattern, comparison)
    expected = reference_mask(dense, mask, refiner.stats, pattern.m if pattern else None)
    refined = refiner.refine(dense, mask, pattern)
    assert torch.equal(refined, expected)
    assert not torch.equal(refined, mask)  # it swapped something
    assert torch.equal(layer.weight.detach(), dense.masked_fill(refined, 0))


@pytest.mark.parametrize(("pattern", "comparison"), [(None, "row"), (None, "matrix"), (NMPattern(1, 4), "row")])
def test_every_row_keeps_its_sparsity_exactly(pattern, comparison: str) -> None:
    """Even where the candidates run out (rows of 16 with 50 cycles): one weight grown for each one pruned."""
    layer, X, dense, mask, refiner = wanda_then_dsnot(24, 16, 3, 0.6, pattern, comparison)
    refined = refiner.refine(dense, mask, pattern)
    assert torch.equal(refined.sum(dim=1), mask.sum(dim=1))
    if pattern:
        assert (refined.reshape(24, -1, 4).sum(dim=-1) == 3).all()
    assert (refined != mask).any()


@pytest.mark.parametrize("seed", range(4))
def test_it_lowers_the_reconstruction_error_of_wanda(seed: int) -> None:
    """||W X - W' X|| on the calibration tokens, rows as wide as a small LLM's: DSnoT's 50 cycles are made for
    them (in rows of 64 or 256 inputs they swap away a large part of the row and raise the error)."""
    layer, X, dense, mask, refiner = wanda_then_dsnot(16, 1024, seed, 0.5)
    wanda_error = output_error(dense, dense.masked_fill(mask, 0), X)
    refiner.refine(dense, mask)
    assert output_error(dense, layer.weight.detach(), X) < wanda_error


def test_statistics_are_the_reference_s_definitions() -> None:
    """sum_row: a sequence's sum averaged over sequences; var: the mean of each sequence's variance; scaler_row:
    Wanda's. Micro-batches of any size give the same statistics (float32, also for bfloat16 inputs)."""
    X = shifted_inputs(samples=6, tokens=5, cols=8, seed=9)
    stats = calibrate(DSnoTRefiner(make_layer(4, 8)), X, splits=[1, 2, 3]).stats
    other = calibrate(DSnoTRefiner(make_layer(4, 8)), X, splits=[6]).stats
    assert torch.allclose(stats.sum_row, X.sum(dim=1).mean(dim=0), atol=1e-5)
    assert torch.allclose(stats.var, X.var(dim=1, unbiased=False).mean(dim=0), atol=1e-5)
    assert torch.allclose(stats.scaler_row, X.pow(2).sum(dim=1).mean(dim=0), atol=1e-5)
    assert all(torch.allclose(getattr(stats, k), getattr(other, k), atol=1e-5) for k in ("sum_row", "var"))
    half = calibrate(DSnoTRefiner(make_layer(4, 8).to(torch.bfloat16)), X.to(torch.bfloat16)).stats
    assert half.var.dtype == half.sum_row.dtype == torch.float32


def test_it_refines_the_mask_of_a_matrix_comparison_too() -> None:
    """Rows of unequal sparsity (a per-matrix Wanda mask) each keep theirs."""
    layer, X, dense, mask, refiner = wanda_then_dsnot(8, 32, 4, 0.5, None, "matrix")
    scores = dense.abs() * refiner.stats.scaler_row.sqrt()
    assert torch.equal(mask, brute_matrix_mask(scores, 0.5))
    assert torch.equal(dsnot_mask(dense, mask, refiner.stats).sum(dim=1), mask.sum(dim=1))


# -------------------------------------------------------------------------
# --refine: the fine step, the identity, the keys, bad combinations
# -------------------------------------------------------------------------


def test_the_fine_step_refines_every_layer_after_the_pruner(make_adapter, toy_text) -> None:
    masks = {}
    for refine in (None, "dsnot"):
        adapter = make_adapter("tiny-llama")
        batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
        config = PruneConfig.build(model="tiny-llama", allocator="uniform", sparsity=0.5, refine=refine)
        result = compress(adapter, config, resolve_methods(REGISTRIES, config), batch)
        assert all(v == pytest.approx(0.5) for v in result.measured.per_layer().values())
        masks[refine] = {n: lin.weight == 0 for n, lin in adapter.prunable_layers().items()}
    for name, mask in masks["dsnot"].items():
        assert torch.equal(mask.sum(dim=1), masks[None][name].sum(dim=1)), name
    assert sum(not torch.equal(masks["dsnot"][n], masks[None][n]) for n in masks[None]) > len(masks[None]) // 2


def test_refine_is_in_the_method_identity_and_the_checkpoint_key() -> None:
    plain, refined = (RunConfig.build(model="tiny-llama", refine=r) for r in (None, "dsnot"))
    assert plain.method()["pruner_options"] == {"comparison": "auto"}  # keys of before --refine unchanged
    assert refined.method()["pruner_options"] == {"comparison": "auto", "refine": "dsnot"}
    registries = _plugins()
    keys = _keys(plain, registries), _keys(refined, registries)
    assert keys[0]["allocation"] == keys[1]["allocation"] and keys[0]["checkpoint"] != keys[1]["checkpoint"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"refine": "dsnto"}, "--refine 'dsnto' is not a refinement of a pruner's mask. Did you mean 'dsnot'?"),
        ({"refine": "wanda"}, "--refine 'wanda' is not a refinement of a pruner's mask. Available: dsnot"),
        ({"pruner": "sparsegpt", "refine": "dsnot"}, "sparsegpt also changes the weights it keeps"),
        ({"pruner": "dsnot"}, "dsnot refines another pruner's mask: use --pruner wanda --refine dsnot"),
    ],
)
def test_bad_combinations_fail_before_any_model_loads(settings: dict, message: str) -> None:
    from test_device import one_error_line

    args = [f"--{k}={v}" for k, v in settings.items()]
    line = one_error_line(["prune", "--model", "tiny-llama", "--no-eval", *args])
    assert message in line


def test_magnitude_can_be_refined_too() -> None:
    """DSnoT collects its own statistics: a pruner that needs no inputs is refined as the reference allows."""
    config = PruneConfig.build(model="tiny-llama", pruner="magnitude", refine="dsnot")
    assert resolve_methods(REGISTRIES, config).refiner is DSnoTRefiner


@pytest.mark.slow  # a CLI run in a fresh process: minutes on two cores
@pytest.mark.parametrize("flags", [["--pruner", "ria"], ["--refine", "dsnot"]])
def test_ecoflap_prune_reaches_the_target_sparsity(tmp_path: Path, flags: list[str]) -> None:
    proc = ecoflap(
        "prune", "--model", "tiny-llama", "--corpus", str(toy_corpus(tmp_path)), "--allocator", "uniform",
        "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "32", "--no-eval",
        "--db", f"sqlite:///{tmp_path / 'results.db'}", "-o", str(tmp_path / "out"), *flags,
        env={"ECOFLAP_RUN_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"]["pruner"] == (flags[1] if flags[0] == "--pruner" else "wanda")
    assert report["method"]["pruner_options"].get("refine") == ("dsnot" if "--refine" in flags else None)
    assert all(v == pytest.approx(0.5) for v in report["measured_per_layer"].values())
