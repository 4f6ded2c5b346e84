"""A results database seeded by real runs of the job on the tiny models, for the dashboard tests.

Each run is the prune-and-evaluate flow of ``ecoflap run`` (in this process, against Prefect's
ephemeral API unless one is set), recorded by the flow in ``root/results.db``: tiny-llama dense and
pruned by two methods at two sparsities (WikiText perplexity on two documents), tiny-mini-blip2 dense
and pruned once (VQA on a few questions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SPARSITIES = (0.5, 0.6)
METHODS = ({"allocator": "ecoflap", "scorer": "zeroth-order"}, {"allocator": "uniform"})
SMALL = {"nsamples": 4, "seqlen": 32, "score_nsamples": 2, "score_seqlen": 16}
LLAMA = {"model": "tiny-llama", "tasks": ["wikitext"], "limit": 2, "task_args": {"tokens": 256}, **SMALL}
BLIP2 = {"model": "tiny-mini-blip2", "tasks": ["vqa"], "limit": 4, **SMALL}


def write_corpus(path: Path, articles: int = 20, words: int = 300) -> Path:
    """The first ``articles`` of the shipped Wikipedia text, cut to ``words`` words (tokenizing all of it is slow)."""
    from ecoflap.core.datasets.corpora import wikipedia_articles

    path.write_text("\n\n".join(" ".join(a.split()[:words]) for a in wikipedia_articles()[:articles]))
    return path


def run_configs(corpus: Path) -> list[Any]:
    """The seeded runs: dense baselines first, then every method at every sparsity."""
    from ecoflap.pipelines.run_config import RunConfig

    llama, blip2 = LLAMA | {"corpus": str(corpus)}, BLIP2  # mini-blip2 calibrates on easy-vqa image-caption pairs
    configs = [RunConfig(**llama, dense=True)]
    configs += [RunConfig(**llama, **method, sparsity=s) for method in METHODS for s in SPARSITIES]
    configs += [RunConfig(**blip2, dense=True), RunConfig(**blip2, sparsity=0.5)]
    return configs


def seed_database(root: Path) -> str:
    """Run every seeded configuration and record it in ``root/results.db``; returns the database URL."""
    from ecoflap.pipelines import steps
    from ecoflap.pipelines.flows import run_flow

    url = f"sqlite:///{root / 'results.db'}"
    previous = os.environ.get(steps.RUN_CACHE_ENV)
    os.environ[steps.RUN_CACHE_ENV] = str(root / "cache")  # a fresh step cache: every step runs for real
    try:
        for n, config in enumerate(run_configs(write_corpus(root / "corpus.txt"))):
            run_flow(config.model_copy(update={"database_url": url, "output": str(root / "runs" / str(n))}))
    finally:
        if previous is None:
            os.environ.pop(steps.RUN_CACHE_ENV, None)
        else:
            os.environ[steps.RUN_CACHE_ENV] = previous
    return url
