"""mini-blip2's network: the Q-Former-style bridge, vision -> bridge -> language model, its text batches.

The adapter, loaders and commands are in mini_blip2.py; the training in mini_blip2_train.py. Both
import this module (and neither imports the other's way back).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch
from ecoflap.core.errors import EcoflapError
from ecoflap.plugins.models.mini_common import WEIGHTS

BRIDGE_FILE = "mini_blip2_bridge.safetensors"
BRIDGE_META = "mini_blip2_bridge.json"


@dataclass(frozen=True)
class BridgeConfig:
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    queries: int = 8
    ffn: int = 1024
    vision_dim: int = 384
    lm_dim: int = 576
    max_instruction_tokens: int = 24


@dataclass(frozen=True)
class GenerationConfig:
    """Every setting of inference, pinned (LAVIS users lose weeks to unpinned ones)."""

    image_size: int = 112
    vqa_prompt: str = "Question: {} Short answer:"
    caption_prompt: str = "A short caption:"
    answer_end: str = "\n"  # training targets end with it; generation stops on it
    max_new_tokens: int = 5
    num_beams: int = 1  # greedy
    length_penalty: float = 1.0  # unused by greedy decoding; recorded for the results
    rank_score: str = "sum of answer-token log-probabilities"
    micro_batch: int = 32


class QFormerBridge(nn.Module):
    """Learned queries + instruction tokens; each layer: self-attention, cross-attention to the image, MLP."""

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        self.image_proj = nn.Linear(config.vision_dim, config.d_model)
        self.text_proj = nn.Linear(config.lm_dim, config.d_model)
        self.queries = nn.Parameter(torch.randn(config.queries, config.d_model) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                config.d_model,
                config.heads,
                config.ffn,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.layers)
        )
        self.out_norm = nn.LayerNorm(config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.lm_dim)
        # soft tokens start at the scale of SmolLM2's token embeddings (rms 0.14), not 4x above it
        nn.init.normal_(self.out_proj.weight, std=0.01)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, N, vision_dim]`` + instruction embeddings ``[B, T, lm_dim]`` -> soft prompt."""
        n = self.config.queries
        x = torch.cat([self.queries.expand(image.shape[0], -1, -1), self.text_proj(text)], dim=1)
        pad = torch.cat([text_mask.new_ones(image.shape[0], n), text_mask], dim=1) == 0
        memory = self.image_proj(image)
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask=pad)
        return self.out_proj(self.out_norm(x[:, :n]))


class MiniBlip2(nn.Module):
    """Vision encoder -> bridge -> causal language model."""

    def __init__(self, vision: nn.Module, bridge: QFormerBridge, language: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.bridge = bridge
        self.language = language

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values).last_hidden_state

    def prefix(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The bridge's soft prompt from image features and the instruction tokens."""
        embed = self.language.get_input_embeddings()
        return self.bridge(features, embed(batch["instruction_ids"]), batch["instruction_mask"])

    def lm_inputs(self, prefix: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Soft prompt + (left-padded) text; positions count real tokens only, so padding changes nothing."""
        embeds = torch.cat([prefix, self.language.get_input_embeddings()(batch["input_ids"])], dim=1)
        mask = torch.cat([batch["attention_mask"].new_ones(prefix.shape[:2]), batch["attention_mask"]], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}

    def hidden(self, batch: Batch, features: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states of the language model over soft prompt + text (no LM head)."""
        features = self.image_features(batch["pixel_values"]) if features is None else features
        inputs = self.lm_inputs(self.prefix(features, batch), batch)
        return self.language.model(**inputs, use_cache=False).last_hidden_state

    def target_loss(self, batch: Batch, features: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample mean cross-entropy of the target tokens (``labels`` != -100); LM head on targets only."""
        hidden = self.hidden(batch, features)
        n = self.bridge.config.queries
        labels = batch["labels"]
        rows, cols = torch.nonzero(labels != -100, as_tuple=True)
        logits = self.language.lm_head(hidden[rows, n + cols - 1]).float()
        token_loss = F.cross_entropy(logits, labels[rows, cols], reduction="none")
        total = torch.zeros(labels.shape[0], dtype=token_loss.dtype, device=token_loss.device)
        total = total.index_add_(0, rows, token_loss)
        return total / (labels != -100).sum(1).clamp(min=1)


def left_pad(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def text_batch(
    tokenizer: Any,
    instructions: Sequence[str],
    prompts: Sequence[str],
    targets: Sequence[str] | None,
    max_instruction_tokens: int,
) -> Batch:
    """Instruction ids for the bridge; prompt (+ target) ids for the LM, left-padded; labels on targets."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    instruction_ids, instruction_mask = left_pad([encode(t)[:max_instruction_tokens] for t in instructions], pad)
    prompt_ids = [encode(p) for p in prompts]
    target_ids = [encode(t) for t in targets] if targets is not None else [[] for _ in prompts]
    input_ids, attention_mask = left_pad([p + t for p, t in zip(prompt_ids, target_ids, strict=True)], pad)
    labels = torch.full_like(input_ids, -100)
    for i, target in enumerate(target_ids):
        if target:
            labels[i, -len(target) :] = torch.tensor(target)
    return {
        "instruction_ids": instruction_ids,
        "instruction_mask": instruction_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def bridge_state(bridge: QFormerBridge) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in bridge.state_dict().items()}


def load_bridge(file: Path, config: BridgeConfig) -> QFormerBridge:
    from safetensors.torch import load_file

    if not file.is_file():
        raise EcoflapError(
            f"mini-blip2 bridge weights {file} are missing: make them with `ecoflap zoo train mini-blip2`"
        )
    bridge = QFormerBridge(config)
    bridge.load_state_dict({k: v.float() for k, v in load_file(file).items()})
    return bridge.eval()


def bridge_config(folder: Path = WEIGHTS) -> BridgeConfig:
    """The bridge's sizes recorded beside its weights in ``folder`` (the shipped ones by default)."""
    meta = folder / BRIDGE_META
    if not meta.is_file():
        return BridgeConfig()
    return BridgeConfig(**json.loads(meta.read_text())["bridge"])
