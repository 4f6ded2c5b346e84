"""A results database seeded by real pipeline runs on the tiny models, for the dashboard tests.

Each run goes through the steps of ``ecoflap run`` (``pipelines/steps.py``: coarse scores -> allocation
-> fine step -> evaluation -> results document) in this process, without Prefect, and is recorded with
``ResultsStore.record``: tiny-llama dense and pruned by two methods at two sparsities (WikiText
perplexity on two documents), tiny-mini-blip2 dense and pruned once (VQA on a few questions).
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


def pipeline_document(config: Any, registries: Any, log: Any = print) -> dict[str, Any]:
    """The results document of one run, through the same steps as the prune-and-evaluate flow."""
    from ecoflap.pipelines import steps

    identity = steps.identify(config, registries, log)
    done: dict[str, Any] = {}
    if not config.dense:
        done["scores"] = steps.coarse_scores(config, identity, registries, log)
        done["allocation"] = steps.allocation_step(config, identity, done["scores"], registries, log)
        done["checkpoint"] = steps.fine_step(config, done["allocation"], registries, log)
    checkpoint = done.get("checkpoint")
    model_key = checkpoint["key"] if checkpoint else steps.dense_key(identity)
    path = checkpoint["path"] if checkpoint else None
    evaluations = [steps.evaluate_step(config, model_key, path, task, registries, log) for task in config.tasks]
    return steps.assemble(config, identity, done, evaluations)


def seed_database(root: Path, log: Any = print) -> str:
    """Run every seeded configuration and record it in ``root/results.db``; returns the database URL."""
    from ecoflap.evaluation.results.store import ResultsStore
    from ecoflap.pipelines import steps

    url = f"sqlite:///{root / 'results.db'}"
    store = ResultsStore(url)
    registries = steps.default_registries()
    previous = os.environ.get(steps.RUN_CACHE_ENV)
    os.environ[steps.RUN_CACHE_ENV] = str(root / "cache")  # a fresh step cache: every step runs for real
    try:
        for config in run_configs(write_corpus(root / "corpus.txt")):
            store.record(pipeline_document(config, registries, log))
    finally:
        store.close()
        if previous is None:
            os.environ.pop(steps.RUN_CACHE_ENV, None)
        else:
            os.environ[steps.RUN_CACHE_ENV] = previous
    return url
