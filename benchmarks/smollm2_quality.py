"""Pruning quality on SmolLM2-135M (real weights): held-out perplexity of every method, one table.

Calibration: ``--nsamples x --seqlen`` tokens of the shipped Wikipedia text (default 32 x 512) for the
fine step; the coarse scores are computed once per scorer (``--score-nsamples x --score-seqlen``) and
reused at every sparsity. Perplexity: lm-eval ``loglikelihood_rolling`` on the held-out articles.
Results go to a JSON file after each row, so an interrupted run resumes where it stopped.

    python benchmarks/smollm2_quality.py [--sparsities 0.5 0.6] [--out benchmarks/results/smollm2_quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.compress import Methods, compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets.corpora import load_corpus, split_corpus
from ecoflap.core.plugins import load_plugins
from ecoflap.evaluation.perplexity import perplexity
from ecoflap.plugins.models.hf_causal_lm import load_smollm2

REG = load_plugins()


class FixedScores:
    """A scorer that returns scores computed earlier (the coarse step is independent of sparsity)."""

    name = "precomputed"

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        return self.scores


def rows(sparsities: list[float]) -> list[tuple[str, str, str, float]]:
    """(label, scorer, pruner, sparsity) in table order."""
    out = []
    for s in sparsities:
        out += [(f"uniform {p}", "", p, s) for p in ("magnitude", "wanda", "sparsegpt")]
        out += [(f"ECoFLaP {sc} + wanda", sc, "wanda", s) for sc in ("zeroth-order", "first-order")]
    return out


def evaluate(adapter: Any, heldout: list[str], args: argparse.Namespace) -> dict[str, Any]:
    return perplexity(adapter.model, adapter.tokenizer, heldout, max_length=args.seqlen, limit_tokens=args.ppl_tokens)


def coarse_scores(scorer: str, texts: list[str], args: argparse.Namespace) -> tuple[dict[str, float], float]:
    adapter = load_smollm2(LoadOptions("smollm2-135m"))
    batch = adapter.calibration_batch(texts, args.score_nsamples, args.score_seqlen, args.seed)
    instance = REG.scorers.get(scorer)(seed=args.seed, micro_batch=args.micro_batch)
    start = time.perf_counter()
    scores = instance.score(adapter, adapter.towers(), batch)
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--score-nsamples", type=int, default=8)
    parser.add_argument("--score-seqlen", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--ppl-tokens", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/smollm2_quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ECOFLAP_THREADS", "2")))
    done: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    done["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    texts, heldout = split_corpus(load_corpus("wikipedia"))

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(done, indent=2))

    if "dense" not in done:
        done["dense"] = evaluate(load_smollm2(LoadOptions("smollm2-135m")), heldout, args)
        save()
    for scorer in ("zeroth-order", "first-order"):
        if f"scores/{scorer}" not in done:
            scores, seconds = coarse_scores(scorer, texts, args)
            done[f"scores/{scorer}"] = {"seconds": seconds, "scores": scores}
            save()
    for label, scorer, pruner, sparsity in rows(args.sparsities):
        key = f"{label} @ {sparsity}"
        if key in done:
            continue
        config = PruneConfig.build(
            model="smollm2-135m",
            scorer=scorer or "zeroth-order",
            allocator="ecoflap" if scorer else "uniform",
            pruner=pruner,
            sparsity=sparsity,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            seed=args.seed,
            micro_batch=args.micro_batch,
        )
        adapter = load_smollm2(LoadOptions("smollm2-135m"))
        batch = adapter.calibration_batch(texts, args.nsamples, args.seqlen, args.seed)
        scorer_obj = FixedScores(done[f"scores/{scorer}"]["scores"]) if scorer else None
        methods = Methods(scorer_obj, REG.allocators.get(config.allocator)(), REG.pruners.get(pruner))
        result = compress(adapter, config, methods, batch)
        done[key] = {
            "perplexity": evaluate(adapter, heldout, args),
            "measured_sparsity": result.measured.overall(),
            "fine_seconds": result.timings["fine"],
            "allocation": result.allocation.sparsity,
        }
        save()
        print(f"{key}: word ppl {done[key]['perplexity']['word_perplexity']:.2f}", flush=True)
    print_table(done, args.sparsities)


def print_table(done: dict[str, Any], sparsities: list[float]) -> None:
    dense = done["dense"]
    print("| method | sparsity | measured | word ppl | token ppl |")
    print("|---|---|---|---|---|")
    print(f"| dense | 0 | 0 | {dense['word_perplexity']:.2f} | {dense['token_perplexity']:.2f} |")
    for label, _, _, s in rows(sparsities):
        r = done.get(f"{label} @ {s}")
        if r:
            p, measured = r["perplexity"], r["measured_sparsity"]
            print(f"| {label} | {s} | {measured:.4f} | {p['word_perplexity']:.2f} | {p['token_perplexity']:.2f} |")


if __name__ == "__main__":
    main()
