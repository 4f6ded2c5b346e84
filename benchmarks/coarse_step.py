"""Coarse-step benchmark on SmolLM2-135M (real weights), every variant on the same calibration samples.

Side by side in one run, each variant in a fresh subprocess (so peak RSS is its own):
  plain-forward        the model's own forward pass with labels (no grad) over the same micro-batches
  zeroth-order         ours: block outputs cached once per micro-batch, blocks before the perturbed
                       one replayed from the cache, samples batched with one perturbation each
  zeroth-order-ref     the reference's way: per tensor and sample, W += eps z in place, two FULL
                       forward passes, restore by copy (same seeds -> the same estimator)
  zeroth-order-block   one perturbation per block instead of per tensor, central difference
  zeroth-order-fast    one perturbation per block, forward difference (one perturbed pass per block
                       against the unperturbed loss from the cached block outputs)
  zeroth-order-sampled the default mode: per sample one tensor of every block in turn, forward difference
                       (with fewer samples than a block's tensors, more rounds per sample)
  zeroth-order-linear  the exact estimator (per tensor, central) with the linearized loss head (--zo-head
                       linear): the head's loss change g . (h' - h), no vocabulary projection per pass
  zeroth-order-sampled-linear  the default mode with the linearized head
  first-order          |W| * mean|g| from backward passes
Prints time and peak memory as ratios, score agreement, and writes the raw figures as JSON.

    python benchmarks/coarse_step.py --nsamples 4 --seqlen 128 [--out benchmarks/results/coarse_step.json]
        [--zo-noise N: rounds of the sampled variants] [--dtype float64: agreement without float32 rounding]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [
    "plain-forward",
    "zeroth-order",
    "zeroth-order-ref",
    "zeroth-order-block",
    "zeroth-order-fast",
    "zeroth-order-sampled",
    "zeroth-order-linear",
    "zeroth-order-sampled-linear",
    "zeroth-order-sampled-weighted",
    "first-order",
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def zo_targets(blocks_every: int, blocks: int = 30) -> list[str]:
    """Score the tensors of every ``blocks_every``-th block only (the zeroth-order timings scale with it)."""
    if blocks_every <= 1:
        return []
    chosen = "|".join(str(b) for b in range(0, blocks, blocks_every))
    return [rf"\.layers\.({chosen})\."]


def run_variant(args: argparse.Namespace) -> dict:
    """One variant's time, memory and scores (``args``: the command line's settings)."""
    import torch

    from ecoflap.core.adapters import LoadOptions, split_batch
    from ecoflap.core.datasets.corpora import load_corpus, split_corpus
    from ecoflap.core.scoring import (
        first_order_scores,
        zeroth_order_scores,
        zeroth_order_scores_naive,
    )
    from ecoflap.plugins.models.hf_causal_lm import load_smollm2

    variant, micro_batch, seed = args.variant, args.micro_batch, args.seed
    torch.set_num_threads(int(os.environ.get("ECOFLAP_THREADS", "2")))
    targets = zo_targets(args.blocks_every) if variant.startswith("zeroth-order") else []
    adapter = load_smollm2(LoadOptions("smollm2-135m", targets=targets))
    if args.dtype == "float64":  # the agreement check without float32's rounding of the two losses
        adapter.model.to(torch.float64)
    texts, _ = split_corpus(load_corpus("wikipedia"))
    batch = adapter.calibration_batch(texts, args.nsamples, args.seqlen, seed)
    towers = adapter.towers()
    with torch.no_grad():  # warm-up: lazy one-off allocations of the first forward pass are not the step's
        adapter.model(input_ids=batch["input_ids"][:1, :8], use_cache=False)
    loaded = rss_mb()
    start = time.perf_counter()
    scores = None
    if variant == "plain-forward":
        with torch.no_grad():
            for micro in split_batch(batch, micro_batch):
                adapter.model(input_ids=micro["input_ids"], labels=micro["input_ids"], use_cache=False)
    elif variant == "zeroth-order":
        scores = zeroth_order_scores(adapter, towers, batch, micro_batch=micro_batch, seed=seed)
    elif variant == "zeroth-order-block":
        scores = zeroth_order_scores(adapter, towers, batch, micro_batch=micro_batch, seed=seed, level="block")
    elif variant in ("zeroth-order-fast", "zeroth-order-sampled", "zeroth-order-sampled-weighted"):
        level = "block" if variant == "zeroth-order-fast" else "sampled"
        scores = zeroth_order_scores(
            adapter, towers, batch, micro_batch=micro_batch, seed=seed, level=level, difference="forward",
            num_noise=args.zo_noise if level == "sampled" else 1, weighted=variant.endswith("weighted"),
        )  # fmt: skip
    elif variant == "zeroth-order-linear":
        scores = zeroth_order_scores(adapter, towers, batch, micro_batch=micro_batch, seed=seed, head="linear")
    elif variant == "zeroth-order-sampled-linear":
        scores = zeroth_order_scores(
            adapter, towers, batch, micro_batch=micro_batch, seed=seed, level="sampled", difference="forward",
            head="linear", num_noise=args.zo_noise,
        )  # fmt: skip
    elif variant == "zeroth-order-ref":
        scores = zeroth_order_scores_naive(adapter, towers, batch, seed=seed)
    elif variant == "first-order":
        scores = first_order_scores(adapter, towers, batch, micro_batch=1)
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "loaded_rss_mb": loaded,
        "scores": scores,
    }


def spawn(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--nsamples",
        str(args.nsamples),
        "--seqlen",
        str(args.seqlen),
        "--micro-batch",
        str(args.micro_batch),
        "--seed",
        str(args.seed),
        "--blocks-every",
        str(args.blocks_every),
        "--zo-noise",
        str(args.zo_noise),
        "--dtype",
        args.dtype,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if proc.returncode:
        sys.exit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def block_sums(scores: dict[str, float]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, value in scores.items():
        block = name.rsplit(".", 2)[0]
        sums[block] = sums.get(block, 0.0) + value
    return sums


def report(results: dict[str, dict], args: argparse.Namespace) -> dict:
    """Ratios and score agreements of the variants that ran (``--variants`` may leave some out)."""
    from scipy.stats import spearmanr

    def ratio(a: str, b: str, key: str = "seconds") -> float:
        return results[a][key] / results[b][key]

    def growth(v: str) -> float:  # memory the step itself added above the loaded, warmed-up model
        return results[v]["peak_rss_mb"] - results[v]["loaded_rss_mb"]

    def blocks_rho(a: str, b: str) -> float:
        x, y = block_sums(results[a]["scores"]), block_sums(results[b]["scores"])
        return spearmanr([x[k] for k in x], [y[k] for k in x]).statistic

    ratios = {  # name: (numerator, denominator, key)
        "speedup_ours_vs_reference_way": ("zeroth-order-ref", "zeroth-order", "seconds"),
        "time_ratio_zeroth_vs_first_order": ("zeroth-order", "first-order", "seconds"),
        "time_ratio_reference_way_vs_first_order": ("zeroth-order-ref", "first-order", "seconds"),
        "time_ratio_block_vs_first_order": ("zeroth-order-block", "first-order", "seconds"),
        "time_ratio_fast_vs_first_order": ("zeroth-order-fast", "first-order", "seconds"),
        "time_ratio_sampled_vs_first_order": ("zeroth-order-sampled", "first-order", "seconds"),
        "speedup_linear_vs_reference_way": ("zeroth-order-ref", "zeroth-order-linear", "seconds"),
        "speedup_linear_vs_exact": ("zeroth-order", "zeroth-order-linear", "seconds"),
        "time_ratio_sampled_linear_vs_first_order": ("zeroth-order-sampled-linear", "first-order", "seconds"),
        "speedup_fast_vs_exact": ("zeroth-order", "zeroth-order-fast", "seconds"),
        "speedup_sampled_vs_exact": ("zeroth-order", "zeroth-order-sampled", "seconds"),
        "time_ratio_sampled_weighted_vs_sampled": ("zeroth-order-sampled-weighted", "zeroth-order-sampled", "seconds"),
        "time_ratio_sampled_weighted_vs_first_order": ("zeroth-order-sampled-weighted", "first-order", "seconds"),
        "peak_ratio_zeroth_vs_first_order": ("zeroth-order", "first-order", "peak_rss_mb"),
        "peak_ratio_zeroth_vs_plain_forward": ("zeroth-order", "plain-forward", "peak_rss_mb"),
    }
    agreements = {  # block sums of the scores, Spearman: name: (variant, against)
        "block_level_spearman_vs_tensor_level_block_sums": ("zeroth-order-block", "zeroth-order"),
        "fast_block_spearman_vs_tensor_level_block_sums": ("zeroth-order-fast", "zeroth-order"),
        "sampled_block_spearman_vs_tensor_level_block_sums": ("zeroth-order-sampled", "zeroth-order"),
        "sampled_block_spearman_vs_first_order": ("zeroth-order-sampled", "first-order"),
        "zeroth_vs_first_order_block_spearman": ("zeroth-order", "first-order"),
    }
    summary: dict = {
        "settings": {k: str(v) for k, v in vars(args).items() if k != "out"}
        | {"threads": os.environ.get("ECOFLAP_THREADS", "2")},
        "seconds": {v: r["seconds"] for v, r in results.items()},
        "peak_rss_mb": {v: r["peak_rss_mb"] for v, r in results.items()},
        "step_rss_growth_mb": {v: growth(v) for v in results},
    }
    summary |= {name: ratio(*spec) for name, spec in ratios.items() if {spec[0], spec[1]} <= results.keys()}
    if {"zeroth-order", "first-order", "plain-forward"} <= results.keys():
        summary["growth_ratio_zeroth_vs_first_order"] = growth("zeroth-order") / growth("first-order")
        summary["growth_ratio_zeroth_vs_plain_forward"] = growth("zeroth-order") / max(growth("plain-forward"), 1.0)
    for variant, name in (("zeroth-order", "ours"), ("zeroth-order-linear", "linear")):
        if {variant, "zeroth-order-ref"} <= results.keys():
            summary |= agreement(results[variant]["scores"], results["zeroth-order-ref"]["scores"], name)
    if {"zeroth-order-sampled-linear", "zeroth-order-sampled"} <= results.keys():
        pair = results["zeroth-order-sampled-linear"]["scores"], results["zeroth-order-sampled"]["scores"]
        summary |= agreement(*pair, "sampled_linear", "sampled")
    summary |= {name: blocks_rho(*pair) for name, pair in agreements.items() if set(pair) <= results.keys()}
    return summary


def agreement(ours: dict[str, float], ref: dict[str, float], name: str, against: str = "reference_way") -> dict:
    """Per-tensor agreement of two score sets: the largest relative difference and Spearman's rank correlation."""
    from scipy.stats import spearmanr

    names = list(ours)
    return {
        f"scores_max_relative_difference_{name}_vs_{against}": max(abs(ours[n] - ref[n]) / abs(ref[n]) for n in names),
        f"scores_spearman_{name}_vs_{against}": spearmanr([ours[n] for n in names], [ref[n] for n in names]).statistic,
    }


def print_summary(summary: dict) -> None:
    print(f"settings: {summary['settings']}")
    print(f"{'variant':<20}{'seconds':>10}{'peak RSS MB':>14}{'step growth MB':>16}")
    for v in summary["seconds"]:
        print(
            f"{v:<20}{summary['seconds'][v]:>10.1f}{summary['peak_rss_mb'][v]:>14.0f}"
            f"{summary['step_rss_growth_mb'][v]:>16.0f}"
        )
    for key, value in summary.items():
        if isinstance(value, float):
            print(f"{key:<58} {value:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--blocks-every",
        type=int,
        default=1,
        help="zeroth-order variants score every K-th block only (first-order: all)",
    )
    parser.add_argument("--zo-noise", type=int, default=1, help="rounds of the sampled variants [1]")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="[float32]")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, help="[all]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coarse_step.json"))
    args = parser.parse_args()
    if args.variant:
        figures = run_variant(args)
        print(json.dumps(figures))
        return
    results = {}
    for v in args.variants:
        print(f"running {v} ...", file=sys.stderr, flush=True)
        results[v] = spawn(v, args)
    summary = report(results, args)
    print_summary(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
