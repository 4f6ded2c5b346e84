"""The shared part of the Hugging Face vision(-language) adapters: images, calibration pairs, saving.

Calibration data is a list of ``(image path, caption)`` pairs (``calibration_data = "image-text"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ecoflap.core.adapters import Batch, ModelAdapter
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError

ImagePair = tuple[str | Path, str]


def load_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image or a file path; an undecodable file -> one EcoflapError line."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EcoflapError(f"cannot decode the image {image}: {str(exc).splitlines()[0]}") from None


class ImageTextAdapter(ModelAdapter):
    """Shared by the vision adapters: image preprocessing, calibration pairs, saving."""

    calibration_data: ClassVar[str] = "image-text"

    def __init__(self, model: nn.Module, image_processor: Any, tokenizer: Any, model_id: str, **patterns: Any) -> None:
        super().__init__(model.eval(), model_id, **patterns)
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        pixels = self.image_processor([load_image(i) for i in images], return_tensors="pt")["pixel_values"]
        return pixels.to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def calibration_batch(self, texts: Sequence[ImagePair], nsamples: int, seqlen: int, seed: int) -> Batch:
        """``texts`` are (image path, caption) pairs; ``seqlen`` bounds the caption tokens."""
        chosen = choose_pairs(texts, nsamples, seed)
        batch = {"pixel_values": self.pixel_values([p for p, _ in chosen])}
        return batch | self.text_batch([c for _, c in chosen], seqlen, seed)

    def text_batch(self, captions: Sequence[str], seqlen: int, seed: int) -> Batch:
        """The caption side of a calibration batch."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.image_processor.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


def stack_padded(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one length: (ids, mask)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
