"""mini-blip2 on easy-vqa: dense vs uniform magnitude / Wanda / SparseGPT vs ECoFLaP (zeroth- and
first-order scores + Wanda) at several sparsities, one budget shared by the vision and language towers.

VQA is measured two ways on the same seeded sample of easy-vqa test questions: open generation (the
paper's protocol; official VQA accuracy with the official answer normalisation, the single easy-vqa
answer standing for all ten human answers) and ranking the 13 candidate answers (LAVIS's ``rank``),
plus the share of generated answers that are none of the 13. Rows are appended to the JSON file as
they finish, and a rerun skips the rows already there.

    python benchmarks/mini_blip2_quality.py [--questions 400] [--sparsities 0.3 0.4 0.5 0.6]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.compress import PruneResult, allocate, layer_infos, prune_fine
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets.easy_vqa import question_sample
from ecoflap.core.job import calibration_data, load_model, resolve_methods
from ecoflap.core.plugins import load_plugins
from ecoflap.evaluation.metrics.vqa import vqa_scores

METHODS = {
    "magnitude": {"allocator": "uniform", "pruner": "magnitude"},
    "wanda": {"allocator": "uniform", "pruner": "wanda"},
    "sparsegpt": {"allocator": "uniform", "pruner": "sparsegpt"},
    "ecoflap-zo+wanda": {"allocator": "ecoflap", "scorer": "zeroth-order", "pruner": "wanda"},
    "ecoflap-fo+wanda": {"allocator": "ecoflap", "scorer": "first-order", "pruner": "wanda"},
}


def prune_row(registries: Any, adapter: Any, dense: dict, method: str, sparsity: float, args: Any) -> dict[str, Any]:
    """Reset to the dense weights, then coarse (scores cached per scorer: they do not depend on the
    sparsity), allocation and fine step, exactly as ``compress`` runs them."""
    adapter.model.load_state_dict(dense)
    config = PruneConfig.build(
        model="mini-blip2", sparsity=sparsity, nsamples=args.nsamples, score_nsamples=args.score_nsamples,
        seed=args.seed, **METHODS[method],
    )  # fmt: skip
    methods = resolve_methods(registries, config)
    pairs = calibration_data(adapter, config.corpus)
    towers = adapter.towers()
    scores, coarse = None, 0.0
    if methods.scorer:
        if config.scorer not in SCORES:
            batch = adapter.calibration_batch(pairs, config.score_nsamples, config.score_seqlen, config.seed)
            start = time.perf_counter()
            SCORES[config.scorer] = (methods.scorer.score(adapter, towers, batch), time.perf_counter() - start)
        scores, coarse = SCORES[config.scorer]
    allocation = allocate(layer_infos(towers), config, methods.allocator, scores)
    fine = adapter.calibration_batch(pairs, config.nsamples, config.seqlen, config.seed)
    start = time.perf_counter()
    measured = prune_fine(adapter, towers, config, methods.pruner, fine, allocation.sparsity)
    timings = {"coarse (once per scorer)": coarse, "fine": time.perf_counter() - start}
    summary = PruneResult(allocation, measured, scores, timings, layer_infos(towers)).summary()
    return {k: summary[k] for k in ("measured_sparsity", "per_tower", "per_block", "timings_s")}


SCORES: dict[str, tuple[dict[str, float], float]] = {}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: accuracy by open generation and by ranking, invalid answers, tower sparsity."""
    lines = [
        "| method | target | measured | vision / language | VQA generate | yes/no / other | VQA rank | invalid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(["dense", *METHODS])}
    for r in sorted(rows, key=lambda r: (r["sparsity"], order[r["method"]])):
        towers = r.get("per_tower") or {}
        split = " / ".join(f"{towers[t]['measured']:.3f}" for t in ("vision", "language") if t in towers) or "-"
        lines.append(
            f"| {r['method']} | {r['sparsity']:.1f} | {r.get('measured_sparsity', 0):.4f} | {split} | "
            f"{r['vqa_generate']:.3f} | {r['vqa_generate_yes_no']:.3f} / {r['vqa_generate_other']:.3f} | "
            f"{r['vqa_rank']:.3f} | {r['invalid_rate']:.3f} |"
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
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).parent / "results" / "mini_blip2_quality.json"
    )
    parser.add_argument("--table", action="store_true", help="print the finished rows as a markdown table and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.output.read_text())["rows"]))
        return
    torch.set_num_threads(int(os.environ.get("ECOFLAP_THREADS", len(os.sched_getaffinity(0)))))
    rows: list[dict[str, Any]] = json.loads(args.output.read_text())["rows"] if args.output.is_file() else []
    done = {(r["method"], r["sparsity"]) for r in rows}
    registries = load_plugins()
    adapter = load_model(registries, PruneConfig.build(model=args.model))
    dense = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    questions = question_sample(args.questions)
    plan = [("dense", 0.0)] + [(m, s) for s in args.sparsities for m in args.methods]
    for method, sparsity in plan:
        if (method, sparsity) in done:
            continue
        start = time.perf_counter()
        row: dict[str, Any] = {"method": method, "sparsity": sparsity}
        if method != "dense":
            row |= prune_row(registries, adapter, dense, method, sparsity, args)
        with torch.no_grad():
            row |= vqa_scores(adapter, questions)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("per_block", "examples")}), flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".partial")
        tmp.write_text(json.dumps({"settings": vars(args) | {"output": str(args.output)}, "rows": rows}, indent=1))
        tmp.rename(args.output)


if __name__ == "__main__":
    main()
