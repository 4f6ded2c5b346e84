"""Shared fixtures: tiny random models (built from configs, no files) and a seeded toy corpus."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("ECOFLAP_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def toy_text() -> str:
    rng = random.Random(0)
    words = ["the", "model", "prunes", "weights", "of", "a", "tower", "block", "layer", "sparse"]
    return " ".join(rng.choice(words) for _ in range(6000))


def tiny_adapter(kind: str = "tiny-llama", dtype: torch.dtype = torch.float32, **patterns):
    from ecoflap.core.adapters import LoadOptions
    from ecoflap.plugins.models.hf_causal_lm import _tiny, tiny_llama_config, tiny_opt_config

    config = {"tiny-llama": tiny_llama_config, "tiny-opt": tiny_opt_config}[kind]
    adapter = _tiny(kind, config)(LoadOptions(kind, **patterns))
    adapter.model.to(dtype)
    return adapter


@pytest.fixture
def make_adapter():
    return tiny_adapter
