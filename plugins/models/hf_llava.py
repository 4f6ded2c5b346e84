"""LLaVA (``LlavaForConditionalGeneration``) as an ecoflap model adapter, from a local Hugging Face folder.

Towers, in forward order: ``vision`` (the vision encoder's blocks that feed the projector) and
``language`` (the language model's decoder blocks). One budget covers both (``--per-tower`` splits it).
The multimodal projector, the embeddings, the norms and the LM head are in no tower, hence never
pruned. LLaVA reads the image features from ``hidden_states[vision_feature_layer]`` (LLaVA-1.5: -2,
the second-to-last block's output): the vision blocks after that one change no output, so they are
left out of the tower (dense, never scored) instead of soaking up sparsity that costs nothing.

Calibration and scoring as for BLIP-2: (image, caption) pairs; the processor expands the image token
of a pinned LLaVA-1.5 prompt into one token per image feature; the caption after the prompt is the
target, and the scoring loss is each sample's mean cross-entropy over its caption tokens (what the
model's own ``labels=`` path computes for that sample alone). LLaVA-NeXT and Qwen2-VL are not covered
(their image inputs are patch lists of varying length per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelSpec
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models import hf_folder
from ecoflap.plugins.models.hf_causal_lm import _decoder_layers, _torch_dtype
from ecoflap.plugins.models.hf_image_text import ImageTextAdapter, load_image, stack_padded

LLAVA = hf_folder.FolderNeeds("LlavaForConditionalGeneration", tokenizer=True, processor=True)


@dataclass(frozen=True)
class LlavaSettings:
    """The calibration prompt, pinned: LLaVA-1.5's conversation format; ``{image}`` is the image token."""

    prompt: str = "USER: {image}\nWrite a short caption for the image. ASSISTANT:"


def feature_blocks(layers: int, feature_layer: int | Sequence[int]) -> int:
    """How many vision blocks the projector's input depends on: ``hidden_states[k]`` is block k-1's output
    (k = 0: the embeddings), over ``layers + 1`` hidden states; a list of layers needs the deepest one."""
    wanted = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return max(k % (layers + 1) for k in wanted)


class LlavaAdapter(ImageTextAdapter):
    """``LlavaForConditionalGeneration``: towers ``vision`` then ``language``; the projector stays dense."""

    kind = "llava"

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        model_id: str,
        settings: LlavaSettings = LlavaSettings(),
        **patterns: Any,
    ) -> None:
        super().__init__(model, processor.image_processor, processor.tokenizer, model_id, **patterns)
        self.processor = processor
        self.settings = settings

    # ---- structure ---------------------------------------------------------------------------
    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        vision_prefix, vision = _decoder_layers(self.model.model.vision_tower)
        language_prefix, language = _decoder_layers(self.model.model.language_model)
        used = feature_blocks(len(vision), self.model.config.vision_feature_layer)
        return [
            ("vision", list(vision)[:used], f"model.vision_tower.{vision_prefix}"),
            ("language", list(language), f"model.language_model.{language_prefix}"),
        ]

    # ---- calibration batches -----------------------------------------------------------------
    def calibration_batch(self, texts: Sequence[Any], nsamples: int, seqlen: int, seed: int) -> Batch:
        """``texts`` are (image path, caption) pairs; ``seqlen`` bounds the caption tokens (end token included)."""
        chosen = choose_pairs(texts, nsamples, seed)
        return self.caption_batch([image for image, _ in chosen], [caption for _, caption in chosen], seqlen)

    def caption_batch(self, images: Sequence[Any], captions: Sequence[str], max_tokens: int) -> Batch:
        """Prompt (image tokens expanded by the processor) + caption + end token, right-padded; ``label_mask``
        marks the caption's tokens."""
        rows, starts, pixels = [], [], []
        for image, caption in zip(images, captions, strict=True):
            ids, start, pixel_values = self._sample(load_image(image), caption)
            rows.append(ids[: start + max(max_tokens - 1, 1)] + [self.tokenizer.eos_token_id])
            starts.append(start)
            pixels.append(pixel_values)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids, mask = stack_padded(rows, pad)
        labels = torch.zeros_like(mask)
        for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
            labels[i, start : len(row)] = 1
        pixel_values = torch.cat(pixels).to(self._dtype())
        return {"input_ids": ids, "attention_mask": mask, "label_mask": labels, "pixel_values": pixel_values}

    def _sample(self, image: Any, caption: str) -> tuple[list[int], int, torch.Tensor]:
        """The token ids of prompt and caption together, where the caption starts, and the image's pixels."""
        prompt = self.settings.prompt.format(image=self.processor.image_token)
        whole = self.processor(images=[image], text=[f"{prompt} {caption}"], return_tensors="pt")
        alone = self.processor(images=[image], text=[prompt])
        return whole["input_ids"][0].tolist(), len(alone["input_ids"][0]), whole["pixel_values"]

    # ---- computation -------------------------------------------------------------------------
    def forward(self, batch: Batch) -> Any:
        """The language model's last hidden states (vision tower -> projector -> language model)."""
        return self.model.model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
        )

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of each sample's caption tokens given its image and prompt: ``[batch]``
        (the logits only where a caption token is predicted: position t-1 predicts token t)."""
        hidden = self.forward(batch).last_hidden_state
        head = self.model.get_output_embeddings()
        ids, targets = batch["input_ids"], batch["label_mask"][:, 1:].bool()
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits lose the eps signal
        losses = []
        for b in range(ids.shape[0]):
            logits = head(hidden[b, :-1][targets[b]]).to(dtype)
            losses.append(F.cross_entropy(logits, ids[b, 1:][targets[b]]))
        return torch.stack(losses)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)


# ---------------------------------------------------------------------------------------------
# the local-folder loader
# ---------------------------------------------------------------------------------------------


def is_llava_folder(path: Path) -> bool:
    """A folder whose config.json names LLaVA (architectures, else model_type); a broken one fails here."""
    config = hf_folder.folder_config(path)
    names = hf_folder.architectures(config)
    ours = LLAVA.model_class in names if names else config.get("model_type") == "llava"
    if ours:
        hf_folder.check_folder(path, LLAVA)
    return ours


def load_folder(options: LoadOptions) -> LlavaAdapter:
    """A local LLaVA folder (config.json, weights, tokenizer, processor): never downloads."""
    import transformers

    path = Path(options.source).expanduser()
    if not path.is_dir():
        raise EcoflapError(f"model folder {path} does not exist")
    hf_folder.check_folder(path, LLAVA)
    try:
        model = transformers.LlavaForConditionalGeneration.from_pretrained(
            path, dtype=_torch_dtype(options.dtype), local_files_only=True
        )
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except EcoflapError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises about a user's folder is one line
        raise hf_folder.load_failure(path, exc) from None
    if getattr(processor, "patch_size", None) is None or not hasattr(processor, "image_processor"):
        raise hf_folder.cannot_load(path, "no LLaVA processor (processor_config.json with patch_size)")
    return LlavaAdapter(model, processor, str(path), targets=options.targets, ignore=options.ignore)


@hookimpl
def register_models(register) -> None:
    description = "a local Hugging Face LlavaForConditionalGeneration folder"
    register(ModelSpec("hf-llava", load_folder, description, is_llava_folder))
