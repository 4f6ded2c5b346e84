"""A tiny random LLaVA written as a Hugging Face folder (config, safetensors, tokenizer, LlavaProcessor), so
the tests load it as a user's folder is loaded: ``--model DIR`` through ``from_pretrained``.

CLIP vision encoder (3 blocks, 32 x 32 px, 8 px patches: 16 image tokens after the class token is
dropped; LLaVA-1.5 reads block 1's output, so block 2 feeds nothing), a 2-layer MLP projector, a
3-block LLaMA. The byte tokenizer gains ``<image>`` as token 259.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ecoflap_tiny_models.text import byte_tokenizer, tiny_llama_config
from ecoflap_tiny_models.vision import TINY_IMAGE, tiny_image_processor, tiny_vision_config

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 259
PATCH = 8


def tiny_llava_config() -> Any:
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(**(tiny_vision_config() | {"num_hidden_layers": 3}))
    text = tiny_llama_config(vocab_size=IMAGE_TOKEN_ID + 1, num_hidden_layers=3, tie_word_embeddings=False)
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def tiny_llava_processor() -> Any:
    from transformers import LlavaProcessor

    tokenizer = byte_tokenizer.__wrapped__()  # a fresh copy: the cached one is shared by the other tiny models
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
    return LlavaProcessor(
        image_processor=tiny_image_processor("clip"),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
    )


def write_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A random tiny LLaVA saved as a Hugging Face folder."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_llava_config())
    model.save_pretrained(folder, safe_serialization=True)
    tiny_llava_processor().save_pretrained(folder)
    assert TINY_IMAGE // PATCH == 4
    return folder
