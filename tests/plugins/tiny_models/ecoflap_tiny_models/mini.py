"""Tiny random mini-blip2 and mini-clip: the same code paths as the real ones in a second."""

from __future__ import annotations

from typing import Any

import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.plugins.models.mini_blip2 import MiniBlip2Adapter
from ecoflap.plugins.models.mini_blip2_model import BridgeConfig, GenerationConfig, MiniBlip2, QFormerBridge
from ecoflap.plugins.models.mini_clip import ClipHeadConfig, MiniClip, MiniClipAdapter
from ecoflap_tiny_models.text import byte_tokenizer, tiny_llama_config


def tiny_dinov2() -> Any:
    """A random 2-block, 32-d DINOv2 on 32 px images: the vision tower of the tiny models."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32
    )
    return Dinov2Model(config)


def tiny_mini_blip2(options: LoadOptions) -> MiniBlip2Adapter:
    """Random weights, tiny sizes, a byte tokenizer."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(int(options.extra.get("seed", 0)))
    vision = tiny_dinov2()
    language = LlamaForCausalLM(tiny_llama_config())
    bridge = QFormerBridge(BridgeConfig(d_model=32, layers=1, heads=2, queries=4, ffn=64, vision_dim=32, lm_dim=64))
    model = MiniBlip2(vision, bridge, language).requires_grad_(False).eval()
    generation = GenerationConfig(image_size=32, max_new_tokens=3)
    patterns = {"targets": options.targets, "ignore": options.ignore}
    return MiniBlip2Adapter(model, byte_tokenizer(), "tiny-mini-blip2", generation, **patterns)


def tiny_mini_clip(options: LoadOptions) -> MiniClipAdapter:
    """Random tiny encoders and a byte tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(int(options.extra.get("seed", 0)))
    vision = tiny_dinov2()
    text = BertModel(
        BertConfig(vocab_size=259, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        add_pooling_layer=False,
    )
    config = ClipHeadConfig(dim=16, vision_dim=32, text_dim=32, image_size=32)
    model = MiniClip(vision, text, config).requires_grad_(False).eval()
    return MiniClipAdapter(model, byte_tokenizer(), "tiny-mini-clip", targets=options.targets, ignore=options.ignore)
