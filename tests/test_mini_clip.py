"""mini-clip: the contrastive loss against CLIP's definition, joint pruning of both towers, save/reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.capabilities import ImageTextEmbedder, capabilities_of
from ecoflap.core.compress import Methods, compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets import easy_vqa
from ecoflap.plugins.allocators import EcoflapAllocator
from ecoflap.plugins.models.mini_clip import WEIGHTS, contrastive_loss, load_folder, tiny_mini_clip
from ecoflap.plugins.pruners import WandaPruner
from ecoflap.plugins.scorers import ZerothOrderScorer


@pytest.fixture(scope="module")
def pairs() -> list[tuple[Path, str]]:
    return easy_vqa.image_caption_pairs("test")[:40]


def test_loss_is_clip_infonce_when_captions_differ() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    labels = torch.arange(5)
    clip = (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")) / 2
    assert torch.allclose(contrastive_loss(logits, labels), clip, atol=1e-6)


def test_loss_counts_every_same_caption_pair_as_positive() -> None:
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    same = contrastive_loss(logits, torch.tensor([0, 0, 1]))
    distinct = contrastive_loss(logits, torch.tensor([0, 1, 2]))
    assert same.max() < 1e-3 < distinct[:2].min()  # duplicates are not each other's negatives


def test_tiny_mini_clip_prunes_both_towers_and_reloads(pairs, tmp_path: Path) -> None:
    adapter = tiny_mini_clip(LoadOptions("tiny-mini-clip"))
    assert isinstance(adapter, ImageTextEmbedder) and capabilities_of(adapter) == ["image-text-embedder"]
    batch = adapter.calibration_batch(pairs, 8, 0, 0)
    config = PruneConfig(model="tiny-mini-clip", sparsity=0.5, nsamples=8, score_nsamples=8, micro_batch=4)
    methods = Methods(ZerothOrderScorer(seed=0, micro_batch=4), EcoflapAllocator(), WandaPruner)
    result = compress(adapter, config, methods, batch)
    towers = result.summary()["per_tower"]
    assert set(towers) == {"vision", "text"} and all(t["measured"] > 0.3 for t in towers.values())
    assert result.measured.overall() == pytest.approx(0.5, abs=0.02)
    adapter.save(tmp_path / "m")
    again = load_folder(LoadOptions(str(tmp_path / "m")))
    images = [p for p, _ in pairs[:4]]
    assert torch.equal(adapter.embed_images(images), again.embed_images(images))
    assert torch.equal(adapter.embed_texts(["a red circle"]), again.embed_texts(["a red circle"]))


def test_shipped_heads_record_how_they_were_made() -> None:
    meta = json.loads((WEIGHTS / "mini_clip_heads.json").read_text())
    assert meta["command"].startswith("ecoflap zoo train mini-clip") and meta["final_loss"] < 0.1
    assert (WEIGHTS / "mini_clip_heads.safetensors").stat().st_size < 2_000_000
