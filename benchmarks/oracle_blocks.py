"""Where the budget should go within the language tower of mini-blip2: first-order's block allocation against
zeroth-order's, structured ones and jittered copies, at first-order's own tower split.

Every allocation keeps first-order's vision blocks and its language tower's parameter-weighted sparsity, so
the budget and the tower split are first-order's and only the language tower's blocks differ:

  first-order         its own block sparsities, replayed from file (the from-file path reproduces the run)
  zeroth-order        the default zeroth-order run's language blocks (ECoFLaP, smoothed over 5 blocks)
  flat                every language block at the tower's sparsity
  reversed            first-order's language block sparsities in reverse order (the deep blocks pruned least)
  jitter S #k         first-order's plus Gaussian noise of S per block (seed k), re-centred to the same mean

Each is one run of the job (``from-file`` allocation, the same Wanda fine step) on the validation questions
(``split=validation``, seeded easy-vqa train questions). The jittered copies measure how much accuracy moves
for allocation differences of the size that separates zeroth-order's blocks from first-order's.

    python benchmarks/oracle_blocks.py [--budgets 0.3 0.4] [--jitter 0.02] [--draws 4] [--questions 300]
    python benchmarks/oracle_blocks.py --table
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from job_table import RESULTS, Table, metric, slug, table_arguments
from oracle_split import allocation_file

from ecoflap.core.provenance import read_json
from ecoflap.pipelines.run_cli import prefect_defaults

FOLDER = Path("runs") / "bench-oracle-blocks"
SCORERS = {
    "first-order": {"allocator": "ecoflap", "scorer": "first-order"},
    "zeroth-order": {"allocator": "ecoflap", "scorer": "zeroth-order"},  # the default: sampled, smoothed over 5
}


def layers_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's allocation: one entry per layer with its tower, block, parameters and target sparsity."""
    return document["ecoflap"]["allocation"]


def block_sparsity(layers: list[dict[str, Any]], tower: str) -> dict[str, float]:
    """``{block: target}`` of one tower, in model order (a block's layers share its target)."""
    return {layer["block"]: layer["target"] for layer in layers if layer["tower"] == tower}


def block_params(layers: list[dict[str, Any]], tower: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for layer in layers:
        if layer["tower"] == tower:
            sizes[layer["block"]] = sizes.get(layer["block"], 0) + layer["params"]
    return sizes


def weighted_mean(values: dict[str, float], sizes: dict[str, int]) -> float:
    return sum(values[b] * sizes[b] for b in values) / sum(sizes[b] for b in values)


def recentre(values: dict[str, float], sizes: dict[str, int], mean: float) -> dict[str, float]:
    """Shift ``values`` so that their parameter-weighted mean is ``mean``, within [0, 0.99] (a few rounds:
    clipping moves the mean)."""
    for _ in range(20):
        shift = mean - weighted_mean(values, sizes)
        values = {b: min(0.99, max(0.0, v + shift)) for b, v in values.items()}
    return values


def variants(reference: list[dict[str, Any]], zeroth: list[dict[str, Any]], jitter: float,
             draws: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """The language tower's block sparsities of each allocation, all at the reference's tower mean."""
    ours, sizes = block_sparsity(reference, "language"), block_params(reference, "language")
    mean = weighted_mean(ours, sizes)
    blocks = list(ours)
    found = {
        "first-order": ours,
        "zeroth-order": recentre(block_sparsity(zeroth, "language"), sizes, mean),
        "flat": dict.fromkeys(blocks, mean),
        "reversed": recentre(dict(zip(blocks, reversed(list(ours.values())), strict=True)), sizes, mean),
    }
    for k in range(draws):
        rng = random.Random(k)
        noisy = {b: v + rng.gauss(0.0, jitter) for b, v in ours.items()}
        found[f"jitter {jitter:g} #{k}"] = recentre(noisy, sizes, mean)
    return found


def layer_table(reference: list[dict[str, Any]], language: dict[str, float]) -> dict[str, float]:
    """Per layer: the reference's target in the vision tower, the variant's block sparsity in the language one."""
    return {layer["layer"]: language[layer["block"]] if layer["tower"] == "language" else layer["target"]
            for layer in reference}  # fmt: skip


def run(table: Table, args: argparse.Namespace) -> None:
    prefect_defaults()
    base = {"model": "mini-blip2", "pruner": "wanda", "tasks": ["vqa"], "limit": args.questions, "record": False,
            "task_args": {"split": "validation"}}  # fmt: skip
    for budget in args.budgets:
        documents = {}
        for name, settings in SCORERS.items():
            label = f"ecoflap {name} B={budget}"
            table.run_row(label, base | settings | {"sparsity": budget}, FOLDER, {"kind": "run", "budget": budget})
            documents[name] = read_json(FOLDER / slug(label) / "results.json")
        reference, zeroth = layers_of(documents["first-order"]), layers_of(documents["zeroth-order"])
        for name, language in variants(reference, zeroth, args.jitter, args.draws).items():
            label = f"{name} B={budget}"
            path = allocation_file(FOLDER / "allocations", slug(label), layer_table(reference, language))
            settings = {"allocator": "from-file", "allocation_file": str(path.resolve()), "sparsity": budget}
            distance = sum(abs(language[b] - v) for b, v in block_sparsity(reference, "language").items())
            extra = {"kind": name.split(" ")[0], "budget": budget, "distance": distance / len(language)}
            table.run_row(label, base | settings, FOLDER, extra)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| allocation | budget | vision / language | mean abs block difference to first-order | "
             "VQA generate | VQA rank |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        towers, distance = r["per_tower"], r.get("distance")
        shown = "-" if distance is None else f"{distance:.3f}"
        lines.append(f"| {r['label']} | {r['budget']:.0%} | {towers['vision']:.3f} / {towers['language']:.3f} | "
                     f"{shown} | {metric(r, 'vqa', 'acc'):.3f} | {metric(r, 'vqa', 'rank_acc'):.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.4])
    parser.add_argument("--jitter", type=float, default=0.02, help="noise per language block [0.02]")
    parser.add_argument("--draws", type=int, default=4, help="jittered copies per budget [4]")
    parser.add_argument("--questions", type=int, default=300)
    table_arguments(parser, RESULTS / "oracle_blocks.json")
    args = parser.parse_args()
    table = Table(args.output, args.fresh)
    if not args.table:
        run(table, args)
    print(markdown(table.rows))


if __name__ == "__main__":
    main()
