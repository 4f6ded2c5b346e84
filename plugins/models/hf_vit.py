"""ViT (``ViTForImageClassification``) as an ecoflap model adapter: one tower ``vision``
(vit.encoder.layer); patch embedding and classifier stay dense."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch
from ecoflap.core.calibration import choose_pairs
from ecoflap.plugins.models.hf_image_text import ImagePair, ImageTextAdapter


class VitAdapter(ImageTextAdapter):
    """``ViTForImageClassification``: one tower ``vision``; cross-entropy on labels.

    Calibration labels: a caption that names one of the model's labels (case-insensitive) is that
    label; any other caption gets the dense model's own prediction (argmax) as a pseudo-label.
    """

    kind = "vit"

    @property
    def labels(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [("vision", list(self.model.vit.encoder.layer), "vit.encoder.layer")]

    def calibration_batch(self, texts: Sequence[ImagePair], nsamples: int, seqlen: int, seed: int) -> Batch:
        chosen = choose_pairs(texts, nsamples, seed)
        pixels = self.pixel_values([p for p, _ in chosen])
        index = {name.lower(): i for i, name in enumerate(self.labels)}
        with torch.no_grad():
            predicted = self.classify(pixels).argmax(dim=-1)
        labels = [index.get(c.strip().lower(), int(predicted[i])) for i, (_, c) in enumerate(chosen)]
        return {"pixel_values": pixels, "labels": torch.as_tensor(labels, dtype=torch.long)}

    def forward(self, batch: Batch) -> Any:
        return self.model(pixel_values=batch["pixel_values"])

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.forward(batch).logits.float()
        return F.cross_entropy(logits, batch["labels"], reduction="none")

    @torch.no_grad()
    def classify(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        pixels = images if isinstance(images, torch.Tensor) else self.pixel_values(images)
        return self.model(pixel_values=pixels).logits.float()
