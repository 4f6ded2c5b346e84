"""Real SmolLM2-135M weights (slow: minutes of CPU). Run with ``pytest -m slow``."""

from __future__ import annotations

import pytest

from ecoflap.core.compress import compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets.corpora import load_corpus, split_corpus
from ecoflap.core.job import load_model, resolve_methods
from ecoflap.core.plugins import load_plugins

pytestmark = pytest.mark.slow
REG = load_plugins()


def prune_and_measure(pruner: str, sparsity: float) -> tuple[float, float]:
    """(dense, pruned) token perplexity on ~2k held-out tokens after uniform pruning on 8 x 256 tokens."""
    from ecoflap.evaluation.perplexity import perplexity

    config = PruneConfig.build(
        model="smollm2-135m", allocator="uniform", pruner=pruner, sparsity=sparsity, nsamples=8, seqlen=256
    )
    texts, heldout = split_corpus(load_corpus("wikipedia"))
    adapter = load_model(REG, config)
    dense = perplexity(adapter.model, adapter.tokenizer, heldout, max_length=256, limit_tokens=2048)
    batch = adapter.calibration_batch(texts, config.nsamples, config.seqlen, config.seed)
    result = compress(adapter, config, resolve_methods(REG, config), batch)
    assert result.measured.overall() == pytest.approx(sparsity, abs=0.002)
    pruned = perplexity(adapter.model, adapter.tokenizer, heldout, max_length=256, limit_tokens=2048)
    return dense["token_perplexity"], pruned["token_perplexity"]


def test_wanda_beats_magnitude_on_real_weights() -> None:
    dense, wanda = prune_and_measure("wanda", 0.5)
    _, magnitude = prune_and_measure("magnitude", 0.5)
    assert dense < wanda < magnitude
    assert dense < 60  # a real language model, not random weights (random: ~49k)
