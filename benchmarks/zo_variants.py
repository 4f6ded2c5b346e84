"""Why zeroth-order splits the budget the way it does: every score variant's allocation from one set of scores.

The coarse step's scores of the job (zeroth-order MEZO scalars s_W and first-order |W| * mean|g|, each computed
once by the job's own step or read from its run cache) are turned into each variant's tensor scores and
allocated by the ecoflap allocator at each budget, with sum and avg aggregation; printed per variant:
the parameter-weighted sparsity of each tower, and the Spearman correlation of its block scores with the
first-order grad-mag-abs block scores (the score whose allocation answers best on mini-blip2). No pruning and no
evaluation: this says which variants move the budget where, so that only those are pruned and evaluated
(benchmarks/oracle_split.py, on the validation questions).

Variants of the zeroth-order scalar s_W (an estimate of sqrt(2/pi) * ||grad_W L||_2 summed over samples):
  grad-only         s_W                                  (the reference's scripts: MEZO-GradOnly)
  grad-mag-abs      s_W * sum|W|                         (MEZO-GradMagAbs)
  grad-mag-square   s_W^2 * sum W^2                      (MEZO-GradMagSquare)
  grad-mag-mean     s_W * sum|W| / sqrt(n_W)             (first-order's sum |W| |g| under |g| ~ ||g||_2 / sqrt(n);
                                                         --zo-variant grad-mag-mean)

    python benchmarks/zo_variants.py [--model mini-blip2] [--budgets 0.3 0.4]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy
from scipy.stats import spearmanr

from ecoflap.core.allocation import LayerInfo
from ecoflap.core.compress import allocate
from ecoflap.core.job import load_model, resolve_methods
from ecoflap.core.provenance import read_json, write_json
from ecoflap.core.scoring import zeroth_order_variant
from ecoflap.pipelines import common, steps
from ecoflap.pipelines.run_config import RunConfig

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("grad-only", "grad-mag-abs", "grad-mag-square", "grad-mag-mean")


def coarse(config: RunConfig, registries: Any) -> dict[str, Any]:
    """The job's coarse scores document for ``config`` (``scores``, ``seconds``): from the run cache when the job
    computed them, else computed now."""
    identity = steps.identify(config, registries)
    path = steps.run_cache() / "scores" / f"{steps.scores_key(config, identity)}.json"
    if not path.is_file():
        path = Path(steps.coarse_scores(config, identity, registries)["path"])
    return read_json(path)


def variant_scores(variant: str, scalars: dict[str, float], adapter: Any) -> dict[str, float]:
    return zeroth_order_variant(scalars, adapter, adapter.towers(), variant)


def size_slope(scores: dict[str, float], reference: dict[str, float], layers: list[LayerInfo]) -> float:
    """Least-squares slope of log(score / first-order's) on log(tensor size): 0 where a variant scales with a
    tensor's size as first-order's score does (grad-mag-abs: 0.5 expected, see ecoflap_core/scoring.py)."""
    x = [math.log(layer.size) for layer in layers]
    y = [math.log(scores[layer.name] / reference[layer.name]) for layer in layers]
    return float(numpy.polyfit(x, y, 1)[0])


def weighted_sparsity(sparsity: dict[str, float], layers: list[LayerInfo], granularity: str) -> dict[str, float]:
    """Parameter-weighted sparsity of each group of layers (``granularity``: tower or block)."""
    zeros: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for layer in layers:
        group = layer.group(granularity)
        zeros[group] = zeros.get(group, 0.0) + sparsity[layer.name] * layer.size
        sizes[group] = sizes.get(group, 0) + layer.size
    return {group: zeros[group] / sizes[group] for group in sizes}


def tower_split(sparsity: dict[str, float], layers: list[LayerInfo]) -> dict[str, float]:
    return weighted_sparsity(sparsity, layers, "tower")


def block_totals(scores: dict[str, float], layers: list[LayerInfo]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for layer in layers:
        totals[layer.block] = totals.get(layer.block, 0.0) + scores[layer.name]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-blip2")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.4])
    parser.add_argument("-o", "--output", type=Path, default=RESULTS / "zo_variants.json")
    args = parser.parse_args()
    registries = common.registries(False)
    # the scalars s_W (grad-only: every variant is made from them here) and the allocations unsmoothed
    zo_config = RunConfig.build(model=args.model, scorer="zeroth-order", zo_variant="grad-only", smooth_blocks=1)
    fo_config = RunConfig.build(model=args.model, scorer="first-order")
    scalars, first_order = coarse(zo_config, registries)["scores"], coarse(fo_config, registries)["scores"]
    adapter = load_model(registries, zo_config)
    layers = [LayerInfo(**info) for info in read_json(steps.identify(zo_config, registries)["layers_path"])["layers"]]
    reference_blocks = block_totals(first_order, layers)
    candidates = {f"zeroth-order {v}": variant_scores(v, scalars, adapter) for v in VARIANTS}
    candidates["first-order grad-mag-abs"] = first_order
    rows = []
    for name, scores in candidates.items():
        blocks = block_totals(scores, layers)
        rho = spearmanr([blocks[b] for b in reference_blocks], list(reference_blocks.values())).statistic
        slope = size_slope(scores, first_order, layers)
        for aggregation in ("sum", "avg"):
            for budget in args.budgets:
                config = zo_config.model_copy(update={"sparsity": budget, "aggregation": aggregation})
                split = tower_split(
                    allocate(layers, config, resolve_methods(registries, config).allocator, scores).sparsity, layers
                )
                rows.append({"scores": name, "aggregation": aggregation, "budget": budget, "split": split,
                             "spearman_blocks_vs_first_order": rho, "size_slope_vs_first_order": slope})  # fmt: skip
                print(
                    f"{name:28s} {aggregation:3s} B={budget:.2f}: vision {split.get('vision', 0):.3f} / "
                    f"language {split.get('language', 0):.3f}   block Spearman vs first-order {rho:.3f}, "
                    f"size slope {slope:+.3f}"
                )
    write_json(args.output, {"model": args.model, "budgets": args.budgets, "rows": rows})


if __name__ == "__main__":
    main()
