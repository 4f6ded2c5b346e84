"""mini-clip: the contrastive loss against CLIP's definition, joint pruning of both towers, save/reload."""

from __future__ import annotations

import hashlib
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
from ecoflap.core.job import resolve_model
from ecoflap.core.plugins import load_plugins
from ecoflap.plugins.allocators import EcoflapAllocator
from ecoflap.plugins.models import mini_clip
from ecoflap.plugins.models.mini_blip2 import train_zoo_model
from ecoflap.plugins.models.mini_clip import contrastive_loss, load_folder
from ecoflap.plugins.models.mini_common import WEIGHTS
from ecoflap.plugins.pruners import WandaPruner
from ecoflap.plugins.scorers import ZerothOrderScorer
from ecoflap_tiny_models.mini import tiny_mini_clip


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


def test_the_shipped_heads_sidecar_carries_the_weights_sha256() -> None:
    meta = json.loads((WEIGHTS / "mini_clip_heads.json").read_text())
    assert meta["sha256"] == hashlib.sha256((WEIGHTS / "mini_clip_heads.safetensors").read_bytes()).hexdigest()


def test_zoo_train_mini_clip_writes_to_the_cache_never_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_zoo_model`` on tiny encoders and random features: the result lands in the cache and loads by folder."""
    tiny = tiny_mini_clip(LoadOptions("tiny-mini-clip"))
    ids = sorted(easy_vqa.image_labels("train"))
    features = {i: torch.randn(2, 32, generator=torch.Generator().manual_seed(i)) for i in ids}
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path))
    monkeypatch.setattr(mini_clip, "dinov2_small_folder", lambda: tmp_path)
    monkeypatch.setattr(mini_clip, "minilm_folder", lambda: tmp_path)
    monkeypatch.setattr(mini_clip, "build", lambda *args: (tiny.model, tiny.tokenizer))
    monkeypatch.setattr(mini_clip, "image_features", lambda *args: features)
    shipped = {p.name: p.read_bytes() for p in WEIGHTS.iterdir()}
    written = train_zoo_model("mini-clip", None, 2, 8, None, 0, log=lambda _: None)
    assert written == tmp_path / "zoo" / "mini-clip" / "mini_clip_heads.safetensors"
    assert {p.name: p.read_bytes() for p in WEIGHTS.iterdir()} == shipped
    meta = json.loads((written.parent / "mini_clip_heads.json").read_text())
    assert meta["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest() and meta["train"]["steps"] == 2
    assert resolve_model(load_plugins(), str(written.parent)).name == "mini-clip-trained"
