"""How close zeroth-order's allocation comes to first-order's, by calibration size, rounds and smoothing.

benchmarks/oracle_blocks.py shows that on mini-blip2 block sparsities 0.01-0.02 away from first-order's move
VQA accuracy by up to 8 points on one seed. This measures, without pruning or evaluating, how far the
zeroth-order allocation lies from first-order's computed on the same calibration samples (same seed,
``--score-nsamples`` each): the mean absolute difference of the blocks' sparsity (per tower) and the towers'
split, for each setting, with the coarse step's seconds. A distance is a property of the estimator, free of
the evaluation's noise; it says which settings could bring zeroth-order within first-order's reach, and at
what cost, before any of them is judged on validation questions.

    python benchmarks/zo_distance.py [--nsamples 8 16 32] [--noise 1 2] [--smooth 1 5] [--seeds 42 1]
                                     [--variants grad-mag-abs weight-scaled]

Each row also gives the Spearman correlation of the zeroth-order tensor scores with first-order's.

``--expected``: also what each variant's scores converge to with unlimited draws on the same calibration samples,
from each sample's exact gradient g_b (one backward pass per sample, as first-order's step), so that a distance
splits into the estimator's noise and its systematic part (what it estimates):

  grad-mag-abs    sqrt(2/pi) sum_b ||g_b||_2 * sum |W|           (E|g . z| = sqrt(2/pi) ||g||_2)
  grad-mag-mean   the same / sqrt(n)
  weight-scaled   sqrt(2/pi) sum_b ||W g_b||_2 * sqrt(n)          (along z |W| / rms(W), times ||W||_2)
  first-order     sum_b sum |W g_b|                               (its own score: the check that distance is 0)
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import Any

import torch
from job_table import RESULTS
from scipy.stats import spearmanr
from zo_variants import coarse, tower_split, weighted_sparsity

from ecoflap.core.adapters import Batch, ModelAdapter, Tower, linears
from ecoflap.core.allocation import LayerInfo
from ecoflap.core.compress import allocate, select_towers
from ecoflap.core.job import calibration_batch, load_model, resolve_methods
from ecoflap.core.provenance import git_hash, read_json, versions, write_json
from ecoflap.core.scoring import visit_gradients
from ecoflap.pipelines import common, steps
from ecoflap.pipelines.run_config import RunConfig


def block_sparsity(sparsity: dict[str, float], layers: list[LayerInfo]) -> dict[str, float]:
    """Parameter-weighted sparsity of each block."""
    return weighted_sparsity(sparsity, layers, "block")


def distance(ours: dict[str, float], reference: dict[str, float], layers: list[LayerInfo], tower: str) -> float:
    """Mean absolute difference of one tower's block sparsities."""
    blocks = sorted({layer.block for layer in layers if layer.tower == tower})
    return sum(abs(ours[b] - reference[b]) for b in blocks) / len(blocks)


def expected_scores(adapter: ModelAdapter, towers: list[Tower], batch: Batch) -> dict[str, dict[str, float]]:
    """Each variant's score as unlimited draws give it (the module's text), from per-sample exact gradients."""
    layers = linears(towers)
    sums: dict[str, dict[str, float]] = {k: dict.fromkeys(layers, 0.0) for k in ("g", "wg", "l1")}

    def accumulate(name: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        g, w = grad.double(), weight.detach().double()
        sums["g"][name] += float(g.norm())
        sums["wg"][name] += float((w * g).norm())
        sums["l1"][name] += float((w * g).abs().sum())

    visit_gradients(adapter, towers, batch, accumulate, micro_batch=1, desc="per-sample gradients")
    c = math.sqrt(2 / math.pi)
    magnitude = {n: float(lin.weight.detach().float().abs().sum()) for n, lin in layers.items()}
    size = {n: lin.weight.numel() for n, lin in layers.items()}
    return {
        "grad-mag-abs": {n: c * sums["g"][n] * magnitude[n] for n in layers},
        "grad-mag-mean": {n: c * sums["g"][n] * magnitude[n] / math.sqrt(size[n]) for n in layers},
        "weight-scaled": {n: c * sums["wg"][n] * math.sqrt(size[n]) for n in layers},
        "first-order": sums["l1"],
    }


def spearman(scores: dict[str, float], reference: dict[str, float]) -> float:
    return float(spearmanr([scores[n] for n in reference], list(reference.values())).statistic)


def allocation(config: RunConfig, scores: dict[str, float], layers: list[LayerInfo], registries: Any) -> dict:
    return allocate(layers, config, resolve_methods(registries, config).allocator, scores).sparsity


def measure(config: RunConfig, setting: dict[str, Any], scores: dict[str, float], first_scores: dict[str, float],
            reference: dict[str, float], layers: list[LayerInfo], smooths: list[int],
            registries: Any) -> list[dict[str, Any]]:  # fmt: skip
    """One row per smoothing window: ``scores`` allocated under ``config`` with it, against first-order's blocks
    (``reference``) and scores; each row printed."""
    rows = []
    for smooth in smooths:
        sparsity = allocation(config.model_copy(update={"smooth_blocks": smooth}), scores, layers, registries)
        ours = block_sparsity(sparsity, layers)
        row = setting | {"smooth_blocks": smooth, "spearman": spearman(scores, first_scores),
                         "language_distance": distance(ours, reference, layers, "language"),
                         "vision_distance": distance(ours, reference, layers, "vision"),
                         "split": tower_split(sparsity, layers)}  # fmt: skip
        rows.append(row)
        print(line(row), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    draws = f"noise {row['zo_noise']}" if "zo_noise" in row else "expected"  # expected: no draws, their limit
    setting = (
        f"{row['zo_variant']} seed {row['seed']} nsamples {row['score_nsamples']} {draws} smooth {row['smooth_blocks']}"
    )
    split = f"{row['split']['vision']:.3f} / {row['split']['language']:.3f}"
    distances = f"language blocks {row['language_distance']:.4f}, vision blocks {row['vision_distance']:.4f}"
    return (
        f"{setting}: {distances} from first-order; split {split}; Spearman {row['spearman']:.3f}; "
        f"coarse {row['coarse_s']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-blip2")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, nargs="+", default=[8, 16, 32], help="--score-nsamples [8 16 32]")
    parser.add_argument("--noise", type=int, nargs="+", default=[1, 2], help="--zo-noise [1 2]")
    parser.add_argument("--smooth", type=int, nargs="+", default=[1, 5], help="--smooth-blocks [1 5]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--variants", nargs="+", default=["grad-mag-abs"], help="--zo-variant [grad-mag-abs]")
    parser.add_argument("--difference", default="forward", help="--zo-difference [forward]")
    parser.add_argument("--expected", action="store_true", help="also each variant's noise-free scores")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS / "zo_distance.json")
    args = parser.parse_args()
    registries = common.registries(False)
    rows = []
    for seed, nsamples in itertools.product(args.seeds, args.nsamples):
        base = {"model": args.model, "sparsity": args.budget, "seed": seed, "score_nsamples": nsamples}
        first = RunConfig.build(**base, scorer="first-order")
        layers = [LayerInfo(**i) for i in read_json(steps.identify(first, registries)["layers_path"])["layers"]]
        first_scores = coarse(first, registries)["scores"]
        reference = block_sparsity(allocation(first, first_scores, layers, registries), layers)
        if args.expected:
            model = load_model(registries, first, offload=False)
            batch = calibration_batch(model, first, first.score_nsamples, first.score_seqlen)
            limits = expected_scores(model, select_towers(model.towers(), first.towers), batch)
            for variant, scores in limits.items():
                setting = {"zo_variant": variant, "seed": seed, "score_nsamples": nsamples, "coarse_s": 0.0}
                rows += measure(first, setting, scores, first_scores, reference, layers, args.smooth, registries)
        for variant, noise in itertools.product(args.variants, args.noise):
            config = RunConfig.build(
                **base, scorer="zeroth-order", zo_noise=noise, zo_variant=variant, zo_difference=args.difference
            )
            document = coarse(config, registries)  # its seconds: the step's own time, cached or not
            setting = {"zo_variant": variant, "zo_difference": args.difference, "seed": seed,
                       "score_nsamples": nsamples, "zo_noise": noise, "coarse_s": document["seconds"]}  # fmt: skip
            rows += measure(config, setting, document["scores"], first_scores, reference, layers, args.smooth,
                            registries)  # fmt: skip
    write_json(args.output, {"git_hash": git_hash(), "versions": versions(), "budget": args.budget, "rows": rows})


if __name__ == "__main__":
    main()
