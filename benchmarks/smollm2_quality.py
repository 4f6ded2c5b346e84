"""Pruning quality on SmolLM2-135M (real weights): held-out WikiText perplexity of every method, one table.

Every row is one run of the job (``ecoflap run``'s flow): uniform magnitude / Wanda / SparseGPT and
ECoFLaP (zeroth- and first-order scores) + Wanda and + SparseGPT, at each sparsity, plus the dense model.
The coarse scores are computed once per scorer and reused at every sparsity by Prefect's cache.
Perplexity: the ``wikitext`` task (lm-eval ``loglikelihood_rolling`` on the held-out articles).

    python benchmarks/smollm2_quality.py [--sparsities 0.5 0.6] [-o benchmarks/results/smollm2_quality.json]
    python benchmarks/smollm2_quality.py --table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from job_table import RESULTS, Table, metric, table_arguments

from ecoflap.pipelines.run_cli import prefect_defaults

PRUNERS = ("magnitude", "wanda", "sparsegpt")
SCORERS = ("zeroth-order", "first-order")


def plan(sparsities: list[float]) -> list[tuple[str, dict]]:
    """(label, settings) in table order."""
    rows: list[tuple[str, dict]] = [("dense", {"dense": True})]
    for s in sparsities:
        rows += [(f"uniform {p} @ {s}", {"allocator": "uniform", "pruner": p, "sparsity": s}) for p in PRUNERS]
        rows += [
            (f"ECoFLaP {sc} + {p} @ {s}", {"scorer": sc, "pruner": p, "sparsity": s})
            for sc in SCORERS
            for p in ("wanda", "sparsegpt")
        ]
    return rows


def markdown(table: Table) -> str:
    lines = ["| row | measured | word ppl | token ppl |", "|---|---|---|---|"]
    for r in table.rows:
        word, token = metric(r, "wikitext", "word_perplexity"), metric(r, "wikitext", "token_perplexity")
        lines.append(f"| {r['label']} | {r['measured_sparsity']:.4f} | {word:.2f} | {token:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens of the perplexity")
    parser.add_argument("--seed", type=int, default=42)
    table_arguments(parser, RESULTS / "smollm2_quality.json", "print the finished rows as a markdown table")
    args = parser.parse_args()
    table = Table(args.output, args.fresh)
    if not args.table:
        prefect_defaults()
        base = {"model": "smollm2-135m", "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
                "tasks": ["wikitext"], "limit": None, "task_args": {"tokens": args.tokens, "max_length": args.seqlen},
                "record": False}  # fmt: skip
        for label, settings in plan(args.sparsities):
            table.run_row(label, base | settings, Path("runs") / "bench-smollm2")
    print(markdown(table))


if __name__ == "__main__":
    main()
