"""Tiny random LAVIS BLIP-2 (OPT or T5), built offline."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ecoflap.core.adapters import LoadOptions
from ecoflap.plugins.models.lavis_blip2 import LavisBlip2Adapter, eval_processor, lavis_adapter
from ecoflap.plugins.models.lavis_compat import OfflineParts, ensure_lavis, offline_constructors
from ecoflap_tiny_models.text import byte_tokenizer, tiny_opt_config, tiny_t5_config
from ecoflap_tiny_models.vision import TINY_IMAGE

TINY_PARTS = OfflineParts(
    vit_width=32,
    vit_depth=2,
    vit_heads=4,
    vit_mlp_ratio=2.0,
    vit_patch=8,
    bert=(("hidden_size", 32), ("num_hidden_layers", 2), ("num_attention_heads", 4), ("intermediate_size", 64)),
)


def tiny_opt_folder() -> Path:
    """A random 2-block OPT with a byte-level GPT-2 (slow) tokenizer, saved once per call."""
    from transformers import GPT2Tokenizer, OPTForCausalLM
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    folder = Path(tempfile.mkdtemp(prefix="ecoflap-tiny-opt-"))
    chars = sorted(set(bytes_to_unicode().values()))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    GPT2Tokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="</s>",
        add_bos_token=True,  # as OPT's tokenizer: LAVIS relies on it
    ).save_pretrained(folder)
    OPTForCausalLM(tiny_opt_config(num_hidden_layers=2)).save_pretrained(folder)
    return folder


def tiny_t5_folder() -> Path:
    from transformers import T5ForConditionalGeneration

    folder = Path(tempfile.mkdtemp(prefix="ecoflap-tiny-t5-"))
    byte_tokenizer().save_pretrained(folder)
    T5ForConditionalGeneration(tiny_t5_config()).save_pretrained(folder)
    return folder


def _build_tiny(arch: str, seed: int) -> nn.Module:
    from lavis.models.blip2_models.blip2_opt import Blip2OPT
    from lavis.models.blip2_models.blip2_t5 import Blip2T5

    torch.manual_seed(seed)
    common = {"img_size": TINY_IMAGE, "num_query_token": 4, "vit_precision": "fp32"}
    with offline_constructors(TINY_PARTS):
        if arch == "blip2_opt":
            return Blip2OPT(opt_model=str(tiny_opt_folder()), **common)
        return Blip2T5(t5_model=str(tiny_t5_folder()), **common)


def loader(name: str, arch: str) -> Callable[[LoadOptions], LavisBlip2Adapter]:
    def load(options: LoadOptions) -> LavisBlip2Adapter:
        ensure_lavis()
        model = _build_tiny(arch, int(options.extra.get("seed", 0)))
        return lavis_adapter(model, eval_processor(TINY_IMAGE), name, {"model": name}, options)

    return load
