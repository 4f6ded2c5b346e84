"""Shared fixtures: tiny random models (built from configs, no files) and a seeded toy corpus.

The tiny models are a test plugin (tests/plugins/tiny_models), never in the production registry: its
folder goes on ``sys.path`` (``importlib.metadata`` finds its ``*.dist-info`` when plugins load) and on
``PYTHONPATH`` (for the ``python -m ecoflap.pipelines.cli`` subprocesses of the tests).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("ECOFLAP_TEST_THREADS", "1")))

TINY_MODELS = Path(__file__).parent / "plugins" / "tiny_models"


def _add_tiny_models() -> None:
    if str(TINY_MODELS) not in sys.path:
        sys.path.insert(0, str(TINY_MODELS))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(TINY_MODELS) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TINY_MODELS), *paths])


_add_tiny_models()


@pytest.fixture(scope="session")
def toy_text() -> str:
    rng = random.Random(0)
    words = ["the", "model", "prunes", "weights", "of", "a", "tower", "block", "layer", "sparse"]
    return " ".join(rng.choice(words) for _ in range(6000))


def tiny_adapter(kind: str = "tiny-llama", dtype: torch.dtype = torch.float32, **patterns):
    from ecoflap.core.adapters import LoadOptions
    from ecoflap_tiny_models import text

    config = {"tiny-llama": text.tiny_llama_config, "tiny-opt": text.tiny_opt_config}[kind]
    adapter = text.causal_lm(kind, config)(LoadOptions(kind, **patterns))
    adapter.model.to(dtype)
    return adapter


@pytest.fixture
def toy_corpus(tmp_path: Path, toy_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    words = toy_text.split()
    path.write_text("\n\n".join(" ".join(words[i : i + 300]) for i in range(0, len(words), 300)))
    return path


@pytest.fixture
def make_adapter():
    return tiny_adapter
