"""ALL the compatibility code that LAVIS 1.0.2 needs, in one module.

Why this module exists: salesforce-lavis 1.0.2 (the newest release) pins transformers < 4.27 and
downloads weights inside its constructors; ecoflap runs it beside transformers 4.57 with no network
(OFFLINE_ASSETS.md, "Dependency facts"). What it needs, and nothing else:

1. three names that transformers moved out of ``transformers.modeling_utils`` and that LAVIS's Q-Former,
   OPT and T5 copies still import from there (re-exported from ``transformers.pytorch_utils``);
2. ``GenerationMixin`` among the bases of LAVIS's own ``OPTForCausalLM`` / ``T5ForConditionalGeneration``
   (``PreTrainedModel`` stopped inheriting it in transformers 4.50);
3. constructors that download nothing: ``Blip2Base.init_tokenizer / init_Qformer / init_vision_encoder``
   are overridden (inside :func:`offline_constructors` only) to build bert-base's tokenizer and
   Q-Former and the EVA ViT from local settings; the weights then come from the local checkpoint;
4. a single-process gloo process group (``Blip2Qformer.forward`` gathers across processes);
5. greedy decoding: LAVIS's beam search breaks on transformers >= 4.49 (inputs repeated twice), so
   callers pass ``num_beams=1`` (see plugins/models/lavis_blip2.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoflap.core.errors import EcoflapError

MOVED_NAMES = ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer")


@functools.cache
def ensure_lavis() -> None:
    """Patch transformers and import LAVIS's BLIP-2 modules once (items 1 and 2 above)."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    for name in MOVED_NAMES:
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    try:
        import lavis.models  # noqa: F401  (registers the model classes)
        from lavis.models.blip2_models import modeling_opt, modeling_t5
    except ImportError as exc:
        raise EcoflapError(f"LAVIS models need salesforce-lavis==1.0.2 (pip install --no-deps): {exc}") from None
    from transformers import GenerationMixin

    for cls in (modeling_opt.OPTForCausalLM, modeling_t5.T5ForConditionalGeneration):
        if not issubclass(cls, GenerationMixin):
            cls.__bases__ = (*cls.__bases__, GenerationMixin)


def ensure_process_group() -> None:
    """A single-process gloo group, unless one exists (item 4)."""
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(prefix="ecoflap-gloo-", delete=False)
        store.close()
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)


@dataclass(frozen=True)
class OfflineParts:
    """Sizes of the parts LAVIS would otherwise download: the EVA ViT and the bert-base Q-Former."""

    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.3637
    vit_patch: int = 14
    bert: tuple[tuple[str, Any], ...] = ()  # BertConfig overrides (empty: bert-base-uncased)


BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


@functools.cache
def bert_vocab_file(size: int) -> Path:
    """A WordPiece vocabulary of ``size`` entries (special tokens, then placeholders), written once.

    The Q-Former's own tokenizer is only used by BLIP-2's retrieval heads, never by captioning or
    VQA with OPT/T5; the real bert-base vocabulary is not on this machine.
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + [f"[unused{i}]" for i in range(size - len(specials))]
    path = Path(tempfile.mkdtemp(prefix="ecoflap-bert-vocab-")) / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def _init_tokenizer(cls: type) -> Any:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(bert_vocab_file(64)))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def _init_qformer(parts: OfflineParts):
    def init_qformer(cls: type, num_query_token: int, vision_width: int, cross_attention_freq: int = 2):
        from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel

        config = BertConfig(**(BERT_BASE | dict(parts.bert)))
        config.encoder_width = vision_width
        config.add_cross_attention = True
        config.cross_attention_freq = cross_attention_freq
        config.query_length = num_query_token
        qformer = BertLMHeadModel(config)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, config.hidden_size))
        query_tokens.data.normal_(mean=0.0, std=config.initializer_range)
        return qformer, query_tokens

    return classmethod(init_qformer)


def _init_vision_encoder(parts: OfflineParts):
    def init_vision_encoder(
        cls: type, model_name: str, img_size: int, drop_path_rate: float, use_grad_checkpoint: bool, precision: str
    ):
        from lavis.models.blip2_models.blip2 import LayerNorm
        from lavis.models.eva_vit import VisionTransformer

        if model_name != "eva_clip_g":
            raise EcoflapError(f"ecoflap builds LAVIS's EVA ViT-g offline, not {model_name!r}")
        encoder = VisionTransformer(
            img_size=img_size,
            patch_size=parts.vit_patch,
            use_mean_pooling=False,
            embed_dim=parts.vit_width,
            depth=parts.vit_depth,
            num_heads=parts.vit_heads,
            mlp_ratio=parts.vit_mlp_ratio,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_checkpoint=use_grad_checkpoint,
        )
        return encoder, LayerNorm(encoder.num_features)

    return classmethod(init_vision_encoder)


@contextlib.contextmanager
def offline_constructors(parts: OfflineParts = OfflineParts()) -> Iterator[None]:
    """Inside: BLIP-2 constructors build their tokenizer, Q-Former and ViT from ``parts`` (item 3)."""
    ensure_lavis()
    from lavis.models.blip2_models.blip2 import Blip2Base

    saved = {n: Blip2Base.__dict__[n] for n in ("init_tokenizer", "init_Qformer", "init_vision_encoder")}
    Blip2Base.init_tokenizer = classmethod(_init_tokenizer)
    Blip2Base.init_Qformer = _init_qformer(parts)
    Blip2Base.init_vision_encoder = _init_vision_encoder(parts)
    offline = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(dict.fromkeys(offline, "1"))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Blip2Base, name, method)
        for k, v in offline.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
