"""Tiny random Hugging Face BLIP-2 (OPT or T5), CLIP and ViT: configs, image processors and a CLIP
tokenizer built in code (nothing to download)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ecoflap.core.adapters import LoadOptions
from ecoflap.plugins.models.hf_causal_lm import _torch_dtype
from ecoflap.plugins.models.hf_image_text import ImageTextAdapter
from ecoflap_tiny_models.text import byte_tokenizer, tiny_opt_config, tiny_t5_config

TINY_IMAGE = 32
TINY_IMAGE_TOKEN = 258  # the BLIP-2 placeholder id, only used by transformers' own forward (tests)
#: tiny-vit's classes: easy-vqa's captions ("a red circle"), so easy-vqa pairs calibrate with true labels
TINY_VIT_LABELS = [
    f"a {c} {s}"
    for c in ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
    for s in ("circle", "rectangle", "triangle")
]


def tiny_vision_config() -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": TINY_IMAGE,
        "patch_size": 8,
        "initializer_range": 0.02,  # BLIP-2's vision default (1e-10) would make every image look the same
    }


def tiny_blip2_config(language: str) -> Any:
    from transformers import Blip2Config

    text = tiny_opt_config(num_hidden_layers=2) if language == "opt" else tiny_t5_config()
    qformer = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "encoder_hidden_size": 32,
        "vocab_size": 259,
    }
    return Blip2Config(
        vision_config=tiny_vision_config(),
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=TINY_IMAGE_TOKEN,
    )


def tiny_image_processor(kind: str) -> Any:
    """An image processor built in code (OpenAI CLIP normalisation), 32 x 32 pixels."""
    from transformers import BlipImageProcessor, CLIPImageProcessor, ViTImageProcessor

    square = {"height": TINY_IMAGE, "width": TINY_IMAGE}
    if kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE}, crop_size=square)
    if kind == "vit":
        return ViTImageProcessor(size=square)
    return BlipImageProcessor(size=square)


def clip_byte_tokenizer() -> Any:
    """Bytes, then <pad>, <s>, </s> (the end token has the largest id, as CLIP pools at its end token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {"<pad>": 256, "<s>": 257, "</s>": 258}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 257), ("</s>", 258)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_clip_config() -> Any:
    from transformers import CLIPConfig

    text = {
        "vocab_size": 259,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 256,
        "bos_token_id": 257,
        "eos_token_id": 258,
    }
    return CLIPConfig(text_config=text, vision_config=tiny_vision_config(), projection_dim=16)


def tiny_vit_config() -> Any:
    from transformers import ViTConfig

    names = TINY_VIT_LABELS
    settings = tiny_vision_config() | {"num_labels": len(names)}
    return ViTConfig(**settings, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def tiny_blip2(language: str) -> Callable[[Any], Any]:
    def build() -> tuple[nn.Module, Any, Any]:
        from transformers import Blip2ForConditionalGeneration

        return (
            Blip2ForConditionalGeneration(tiny_blip2_config(language)),
            tiny_image_processor("blip2"),
            byte_tokenizer(),
        )

    return build


def tiny_clip() -> tuple[nn.Module, Any, Any]:
    from transformers import CLIPModel

    return CLIPModel(tiny_clip_config()), tiny_image_processor("clip"), clip_byte_tokenizer()


def tiny_vit() -> tuple[nn.Module, Any, Any]:
    from transformers import ViTForImageClassification

    return ViTForImageClassification(tiny_vit_config()), tiny_image_processor("vit"), None


def loader(name: str, adapter_cls: type[ImageTextAdapter], build: Callable[[], tuple[nn.Module, Any, Any]]):
    def load(options: LoadOptions) -> ImageTextAdapter:
        torch.manual_seed(int(options.extra.get("seed", 0)))
        model, processor, tokenizer = build()
        model.to(_torch_dtype(options.dtype))
        return adapter_cls(model, processor, tokenizer, name, targets=options.targets, ignore=options.ignore)

    return load
