"""What an evaluation task may ask of a model adapter (ARCHITECTURE.md, "Model capabilities").

Adapters implement the protocols they can honour; a task checks with ``isinstance`` (the protocols
are runtime-checkable) and skips a model that lacks its capability, saying why. Images are PIL
images (typed ``Any`` here: ecoflap_core imports torch and the standard library only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LanguageModel(Protocol):
    """What lm-eval's ``HFLM`` needs: a transformers causal LM (or seq2seq) and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any

    def language_model(self) -> tuple[torch.nn.Module, Any]:
        """The (possibly pruned) language model and its tokenizer, for lm-eval."""


@runtime_checkable
class ImageTextEmbedder(Protocol):
    """Image and text embeddings in one space: retrieval and zero-shot classification."""

    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised embeddings, ``[len(images), dim]``."""

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings, ``[len(texts), dim]``."""


@runtime_checkable
class CaptionGenerator(Protocol):
    """Captions for images, with generation settings pinned by the adapter's config."""

    def generate_captions(self, images: Sequence[Any]) -> list[str]: ...


@runtime_checkable
class VisualQuestionAnswerer(Protocol):
    """Short answers to questions about images: open generation and ranking of candidates."""

    def answer_questions(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        """Open generation (the ECoFLaP paper's protocol): the raw answer strings."""

    def rank_answers(self, images: Sequence[Any], questions: Sequence[str], candidates: Sequence[str]) -> list[str]:
        """LAVIS's ``rank`` inference: the candidate with the highest likelihood, per question."""


@runtime_checkable
class ImageClassifier(Protocol):
    """A classifier over a fixed label set (ImageNet top-1 / top-5)."""

    labels: Sequence[str]

    def classify(self, images: Sequence[Any]) -> torch.Tensor:
        """Logits, ``[len(images), len(labels)]``."""


CAPABILITIES: dict[str, type] = {
    "language-model": LanguageModel,
    "image-text-embedder": ImageTextEmbedder,
    "caption-generator": CaptionGenerator,
    "visual-question-answerer": VisualQuestionAnswerer,
    "image-classifier": ImageClassifier,
}


def capabilities_of(adapter: object) -> list[str]:
    """The capability names that ``adapter`` implements."""
    return [name for name, proto in CAPABILITIES.items() if isinstance(adapter, proto)]
