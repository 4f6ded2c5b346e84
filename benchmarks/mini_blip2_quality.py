"""mini-blip2 on easy-vqa: dense vs uniform magnitude / Wanda / SparseGPT vs ECoFLaP (zeroth- and
first-order scores, each + Wanda and + SparseGPT) at several sparsities, one budget shared by the vision and
language towers.

Every row is one run of the job (``ecoflap run``'s flow, the ``vqa`` task plugin): VQA accuracy by open
generation (official VQA accuracy and answer normalisation, the single easy-vqa answer standing for all
ten human answers), by ranking the 13 candidate answers, and the share of generated answers that are
none of the 13, on the first ``--questions`` easy-vqa test questions, with the generation accuracy's 95%
Wilson interval; measured sparsity per tower. ECoFLaP rows run on the job's defaults (zeroth-order: its
default estimator and variant), so the table shows what ``ecoflap run`` gives.
Prefect's cache computes each scorer's coarse scores once for every sparsity.

    python benchmarks/mini_blip2_quality.py [--questions 400] [--sparsities 0.3 0.4 0.5 0.6]
    python benchmarks/mini_blip2_quality.py --table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from job_table import RESULTS, Table, metric, table_arguments, wilson

from ecoflap.pipelines.run_cli import prefect_defaults

PRUNERS = ("magnitude", "wanda", "sparsegpt")
SCORERS = {"zo": "zeroth-order", "fo": "first-order"}
METHODS = {p: {"allocator": "uniform", "pruner": p} for p in PRUNERS} | {
    f"ecoflap-{short}+{p}": {"allocator": "ecoflap", "scorer": scorer, "pruner": p}
    for short, scorer in SCORERS.items()
    for p in ("wanda", "sparsegpt")
}


def markdown(table: Table) -> str:
    """The README table: accuracy by open generation and by ranking, invalid answers, tower sparsity."""
    lines = [
        "| row | measured | vision / language | VQA generate [95%] | VQA rank | invalid |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.rows:
        towers = r["per_tower"]
        split = " / ".join(f"{towers[t]:.3f}" for t in ("vision", "language") if t in towers) or "-"
        low, high = wilson(r)
        lines.append(
            f"| {r['label']} | {r['measured_sparsity']:.4f} | {split} | "
            f"{metric(r, 'vqa', 'acc'):.3f} [{low:.3f}, {high:.3f}] | "
            f"{metric(r, 'vqa', 'rank_acc'):.3f} | {metric(r, 'vqa', 'invalid_rate'):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--score-nsamples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="mini-blip2")
    table_arguments(parser, RESULTS / "mini_blip2_quality.json", "print the finished rows as a markdown table")
    args = parser.parse_args()
    table = Table(args.output, args.fresh)
    if not args.table:
        prefect_defaults()
        base = {"model": args.model, "nsamples": args.nsamples, "score_nsamples": args.score_nsamples,
                "seed": args.seed, "tasks": ["vqa"], "limit": args.questions, "record": False}  # fmt: skip
        plan = [("dense", {"dense": True})] + [
            (f"{m} @ {s}", METHODS[m] | {"sparsity": s}) for s in args.sparsities for m in args.methods
        ]
        for label, settings in plan:
            table.run_row(label, base | settings, Path("runs") / "bench-mini-blip2", {"questions": args.questions})
    print(markdown(table))


if __name__ == "__main__":
    main()
