"""Which zeroth-order default: chosen on validation questions, reported on test, checked on SmolLM2.

Three stages, each a table of runs of the one job (``benchmarks/job_table.py``); every row names all of
its zeroth-order settings, so no row depends on the defaults of the code that runs it:

  validation   mini-blip2 at 30/40%, Wanda, 300 easy-vqa validation questions (seeded train questions,
               never test): the exact estimator (per tensor, central difference) and the fast one (per
               block, forward difference) as grad-mag-abs, the fast one also as grad-only (the exact
               grad-only is in oracle_split.json), beside first-order and uniform. The default: the
               fast variant with the best mean validation accuracy.
  test         mini-blip2 at 30/40% on the first 400 easy-vqa test questions: the chosen zeroth-order
               (``--zo``) + Wanda, first-order + Wanda, uniform Wanda and uniform SparseGPT, each with
               its 95% Wilson interval.
  smollm2      SmolLM2-135M at 50/60%, held-out WikiText perplexity (16,384 tokens): the chosen
               zeroth-order, its exact twin and first-order + Wanda; the chosen one + SparseGPT against
               uniform Wanda and SparseGPT. Nothing is chosen here (a report on data not tuned on).

    python benchmarks/zo_choice.py --stage validation
    python benchmarks/zo_choice.py --stage test --zo "zo fast grad-mag-abs"
    python benchmarks/zo_choice.py --stage smollm2 --zo "zo fast grad-mag-abs"
    python benchmarks/zo_choice.py --stage test --table     # print a finished stage
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from job_table import Table, metric

from ecoflap.pipelines.run_cli import prefect_defaults
from ecoflap.pipelines.run_config import RunConfig

RESULTS = Path(__file__).parent / "results"
MODES = {  # exact: the reference's estimator; the others trade it for time
    "exact": {"zo_level": "tensor", "zo_difference": "central"},
    "fast": {"zo_level": "block", "zo_difference": "forward"},
    "block-central": {"zo_level": "block", "zo_difference": "central"},
    "tensor-forward": {"zo_level": "tensor", "zo_difference": "forward"},
    "fast-noise2": {"zo_level": "block", "zo_difference": "forward", "zo_noise": 2},
    "sampled": {"zo_level": "sampled", "zo_difference": "forward"},
    "sampled-central": {"zo_level": "sampled", "zo_difference": "central"},
    "sampled-noise2": {"zo_level": "sampled", "zo_difference": "forward", "zo_noise": 2},
}
ZEROTH = {
    f"zo {mode} {variant}": {"allocator": "ecoflap", "scorer": "zeroth-order", "zo_variant": variant} | settings
    for mode, settings in MODES.items()
    for variant in ("grad-only", "grad-mag-abs")
}
OTHERS = {
    "first-order": {"allocator": "ecoflap", "scorer": "first-order"},
    "uniform wanda": {"allocator": "uniform"},
    "uniform sparsegpt": {"allocator": "uniform", "pruner": "sparsegpt"},
}
STAGES = {
    "validation": {
        "base": {"model": "mini-blip2", "tasks": ["vqa"], "limit": 300, "task_args": {"split": "validation"}},
        "sparsities": (0.3, 0.4),
    },
    "test": {"base": {"model": "mini-blip2", "tasks": ["vqa"], "limit": 400}, "sparsities": (0.3, 0.4)},
    "smollm2": {
        "base": {
            "model": "smollm2-135m",
            "tasks": ["wikitext"],
            "limit": None,
            "task_args": {"tokens": 16384, "max_length": 512},
        },
        "sparsities": (0.5, 0.6),
    },
}


def exact_twin(label: str) -> str:
    return label.replace("fast", "exact")


def rows_of(stage: str, zo: str | None) -> list[str]:
    """The labels a stage runs, in table order."""
    if stage == "validation":
        return ["zo fast grad-mag-abs", "zo fast grad-only", "first-order", "uniform wanda", "zo exact grad-mag-abs"]
    if zo is None:
        raise SystemExit(f"Error: --stage {stage} reports the chosen zeroth-order: give --zo ({', '.join(ZEROTH)})")
    if stage == "test":
        return [zo, "first-order", "uniform wanda", "uniform sparsegpt"]
    return [zo, "first-order", f"{zo} + sparsegpt", "uniform wanda", "uniform sparsegpt", exact_twin(zo)]


def settings_of(label: str) -> dict[str, Any]:
    if label.endswith(" + sparsegpt"):
        return ZEROTH[label.removesuffix(" + sparsegpt")] | {"pruner": "sparsegpt"}
    return ZEROTH.get(label) or OTHERS[label]


def run_stage(table: Table, stage: str, zo: str | None, labels: list[str], sparsities: list[float]) -> None:
    prefect_defaults()
    spec = STAGES[stage]
    for sparsity in sparsities or spec["sparsities"]:
        for label in labels or rows_of(stage, zo):
            key = f"{label} @ {sparsity}"
            output = str(Path("runs") / "bench-zo-choice" / stage / key)
            config = RunConfig.build(**spec["base"] | {"pruner": "wanda", "record": False, "output": output}
                                     | settings_of(label) | {"sparsity": sparsity})  # fmt: skip
            done = table.run(key, config)
            done.update({"name": label, "sparsity": sparsity, "questions": config.limit})
            table.save()
            print(f"{key}: {summary(done)}", flush=True)


def wilson(row: dict[str, Any]) -> tuple[float, float]:
    """95% Wilson interval of the generation accuracy."""
    from scipy.stats import binomtest

    n = row["questions"]
    k = round(metric(row, "vqa", "acc") * n)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def summary(row: dict[str, Any]) -> str:
    towers = row["per_tower"]
    split = f"vision {towers['vision']:.3f} / language {towers['language']:.3f}, " if "vision" in towers else ""
    if "vqa" in row["results"]:
        return f"{split}VQA generate {metric(row, 'vqa', 'acc'):.3f}, rank {metric(row, 'vqa', 'rank_acc'):.3f}"
    word, token = metric(row, "wikitext", "word_perplexity"), metric(row, "wikitext", "token_perplexity")
    return f"word ppl {word:.2f}, token ppl {token:.2f}"


def markdown(table: Table, stage: str) -> str:
    lines = ["| row | sparsity | towers (vision / language) | result | coarse s |", "|---|---|---|---|---|"]
    for r in table.rows:
        towers = r["per_tower"]
        split = f"{towers['vision']:.3f} / {towers['language']:.3f}" if "vision" in towers else "-"
        result = summary(r).split(", ", 1)[-1] if "vision" in towers else summary(r)
        if stage == "test":
            low, high = wilson(r)
            result += f" [{low:.3f}, {high:.3f}]"
        coarse = r["timings_s"].get("coarse", 0.0)
        lines.append(f"| {r['name']} | {r['sparsity']:.0%} | {split} | {result} | {coarse:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=list(STAGES), required=True)
    parser.add_argument("--zo", choices=list(ZEROTH), help="the zeroth-order row chosen on validation")
    parser.add_argument("--rows", nargs="+", default=[], help="run these rows only (labels as printed)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[], help="[the stage's]")
    parser.add_argument("-o", "--output", type=Path, help="[benchmarks/results/zo_choice_<stage>.json]")
    parser.add_argument("--fresh", action="store_true", help="start a new table (rows of another code version)")
    parser.add_argument("--table", action="store_true", help="print the finished rows")
    args = parser.parse_args()
    table = Table(args.output or RESULTS / f"zo_choice_{args.stage}.json", args.fresh)
    if not args.table:
        run_stage(table, args.stage, args.zo, args.rows, args.sparsities)
    print(markdown(table, args.stage))


if __name__ == "__main__":
    main()
