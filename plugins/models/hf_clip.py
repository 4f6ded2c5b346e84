"""CLIP (``CLIPModel``) as an ecoflap model adapter: towers ``vision`` then ``text``; projections and
embeddings stay dense."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch
from ecoflap.plugins.models.hf_image_text import ImageTextAdapter


class ClipAdapter(ImageTextAdapter):
    """``CLIPModel``: towers ``vision`` and ``text``; symmetric contrastive loss over the batch."""

    kind = "clip"
    #: each sample's loss depends on the other samples of its batch (they are its negatives): score
    #: with one perturbation per micro-batch (``--zo-group`` equal to ``--micro-batch``)
    couples_samples: ClassVar[bool] = True

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [
            ("vision", list(self.model.vision_model.encoder.layers), "vision_model.encoder.layers"),
            ("text", list(self.model.text_model.encoder.layers), "text_model.encoder.layers"),
        ]

    def text_batch(self, captions: Sequence[str], seqlen: int, seed: int) -> Batch:
        limit = min(seqlen, self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, batch: Batch) -> Any:
        return self.model(**batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per sample: (CE of its image over the batch's captions + CE of its caption over the images) / 2."""
        logits = self.forward(batch).logits_per_image.float()
        target = torch.arange(logits.shape[0], device=logits.device)
        image_ce = F.cross_entropy(logits, target, reduction="none")
        text_ce = F.cross_entropy(logits.t(), target, reduction="none")
        return (image_ce + text_ce) / 2

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        return F.normalize(self.model.get_image_features(pixel_values=self.pixel_values(images)).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.text_batch(texts, self.model.config.text_config.max_position_embeddings, 0)
        return F.normalize(self.model.get_text_features(**batch).float(), dim=-1)
