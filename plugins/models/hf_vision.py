"""Hugging Face vision(-language) models as ecoflap model adapters: BLIP-2 (OPT or T5), CLIP, ViT.

Registered names: ``tiny-blip2-opt``, ``tiny-blip2-t5``, ``tiny-clip``, ``tiny-vit`` (random weights from
small configs, a byte tokenizer and an image processor built in code: nothing to download), and the
local-folder loaders ``hf-blip2``, ``hf-clip``, ``hf-vit`` (``config.json`` architectures decide).

Calibration data is a list of ``(image path, caption)`` pairs (``calibration_data = "image-text"``).
Towers and what stays dense:

- BLIP-2: ``vision`` (vision_model.encoder.layers), then the language model: OPT -> one tower
  ``language`` (decoder layers); T5 -> two towers ``language-encoder`` and ``language-decoder``.
  The decoder's first block is not fed by the encoder's last block (it reads the decoder's token
  embeddings and cross-attends to the encoder output), and the sequential replay feeds each block
  the previous block's output inside a tower: only two towers let each stack re-capture its own
  first block's inputs (from a forward pass of the partly pruned model). Q-Former, query tokens,
  language projection, embeddings and LM head are not in any tower, hence dense.
- CLIP: ``vision`` then ``text`` encoder layers; projections and embeddings dense.
- ViT: ``vision`` (vit.encoder.layer); patch embedding and classifier dense.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models.hf_causal_lm import _torch_dtype, byte_tokenizer, tiny_opt_config

ImagePair = tuple[str | Path, str]

# ---------------------------------------------------------------------------------------------
# images and calibration pairs
# ---------------------------------------------------------------------------------------------


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


def _stack_padded(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one length: (ids, mask)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# BLIP-2
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blip2Settings:
    """Every generation and scoring-loss setting of the BLIP-2 adapters, pinned."""

    caption_prompt: str = ""
    caption_max_new_tokens: int = 30
    vqa_prompt: str = "Question: {} Short answer:"
    vqa_max_new_tokens: int = 10
    num_beams: int = 1  # greedy: LAVIS's beam search breaks on transformers >= 4.49
    length_penalty: float = 1.0  # only used with beams
    repetition_penalty: float = 1.0
    #: the reference's prefix-LM split: the caption is cut at a seeded random character in
    #: [1, len/2]; the prefix joins the image (and prompt) as input, the rest is the target
    prefix_split: bool = True

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        return {
            "max_new_tokens": max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
            "length_penalty": self.length_penalty,
            "repetition_penalty": self.repetition_penalty,
        }


def split_caption(caption: str, rng: random.Random) -> tuple[str, str]:
    """(prefix, target) at a random character in [1, len/2], as the reference's prefix-LM loss."""
    if len(caption) < 2:
        return "", caption
    cut = rng.randint(1, max(1, len(caption) // 2))
    return caption[:cut], caption[cut:]


class Blip2Adapter(ImageTextAdapter):
    """``Blip2ForConditionalGeneration`` with an OPT (decoder-only) or T5 (encoder-decoder) language model."""

    kind = "blip2"
    comparison: ClassVar[dict[str, str]] = {"vision": "matrix"}  # Wanda per matrix for BLIP-2's ViT

    def __init__(self, *args: Any, settings: Blip2Settings = Blip2Settings(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.decoder_only = self._is_decoder_only()
        if not self.decoder_only:
            install_t5_position_bias(self._lm())

    # ---- the parts (LAVIS's BLIP-2 overrides these) -----------------------------------------
    def _is_decoder_only(self) -> bool:
        return bool(self.model.config.use_decoder_only_language_model)

    def _lm(self) -> nn.Module:
        return self.model.language_model

    def _lm_prefix(self) -> str:
        return "language_model"

    # ---- structure ---------------------------------------------------------------------------
    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [
            ("vision", list(self.model.vision_model.encoder.layers), "vision_model.encoder.layers")
        ] + self._lm_towers()

    def _lm_towers(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        lm, prefix = self._lm(), self._lm_prefix()
        if self.decoder_only:
            return [("language", list(lm.model.decoder.layers), f"{prefix}.model.decoder.layers")]
        return [
            ("language-encoder", list(lm.encoder.block), f"{prefix}.encoder.block"),
            ("language-decoder", list(lm.decoder.block), f"{prefix}.decoder.block"),
        ]

    # ---- text batches ------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def pair_batch(self, prefixes: Sequence[str], targets: Sequence[str], max_tokens: int | None = None) -> Batch:
        """Input text (after the image) and target text, tokenised for this language model."""
        tok = self.tokenizer
        bos = [tok.bos_token_id] if self.decoder_only and tok.bos_token_id is not None else []
        pre = [(bos + self._ids(p))[:max_tokens] for p in prefixes]
        tgt = [(self._ids(t)[: max_tokens and max_tokens - 1] + [tok.eos_token_id]) for t in targets]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.decoder_only:
            ids, mask = _stack_padded([p + t for p, t in zip(pre, tgt, strict=True)], pad)
            labels = torch.zeros_like(mask)
            for i, (p, t) in enumerate(zip(pre, tgt, strict=True)):
                labels[i, len(p) : len(p) + len(t)] = 1
            return {"text_ids": ids, "text_mask": mask, "label_mask": labels}
        prefix_ids, prefix_mask = _stack_padded([p + [tok.eos_token_id] for p in pre], pad)
        target_ids, target_mask = _stack_padded(tgt, pad)
        return {
            "prefix_ids": prefix_ids,
            "prefix_mask": prefix_mask,
            "target_ids": target_ids,
            "target_mask": target_mask,
        }

    def text_batch(self, captions: Sequence[str], seqlen: int, seed: int) -> Batch:
        rng = random.Random(seed)
        splits = [split_caption(c, rng) if self.settings.prefix_split else ("", c) for c in captions]
        prompt = self.settings.caption_prompt
        return self.pair_batch([f"{prompt}{p}" for p, _ in splits], [t for _, t in splits], seqlen)

    # ---- computation -------------------------------------------------------------------------
    def query_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower -> Q-Former -> projection: the image's soft prompt for the language model."""
        return self.model.get_image_features(pixel_values)

    def _with_queries(self, queries: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        text = self._lm().get_input_embeddings()(ids)
        embeds = torch.cat([queries.to(text.dtype), text], dim=1)
        ones = torch.ones(queries.shape[:2], dtype=mask.dtype, device=mask.device)
        return embeds, torch.cat([ones, mask], dim=1)

    def _lm_outputs(self, queries: torch.Tensor, batch: Batch) -> Any:
        lm = self._lm()
        if self.decoder_only:
            embeds, mask = self._with_queries(queries, batch["text_ids"], batch["text_mask"])
            return lm.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        embeds, mask = self._with_queries(queries, batch["prefix_ids"], batch["prefix_mask"])
        labels = batch["target_ids"].masked_fill(batch["target_mask"] == 0, -100)
        return lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            decoder_input_ids=lm._shift_right(labels),
            decoder_attention_mask=batch["target_mask"],
            use_cache=False,
        )

    def forward(self, batch: Batch) -> Any:
        return self._lm_outputs(self.query_embeds(batch["pixel_values"]), batch)

    def token_nll(self, queries: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every target token ``[batch, tokens]`` and the mask of target tokens."""
        out = self._lm_outputs(queries, batch)
        if self.decoder_only:
            q = queries.shape[1]
            ids, mask = batch["text_ids"], batch["label_mask"]
            hidden = out.last_hidden_state[:, q - 1 : q - 1 + ids.shape[1]]  # position t-1 predicts token t
            logits = self._lm().get_output_embeddings()(hidden)
        else:
            ids, mask, logits = batch["target_ids"], batch["target_mask"], out.logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits lose the eps signal
        nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        return nll * mask, mask

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of each sample's target tokens given its image (and prefix): ``[batch]``."""
        nll, mask = self.token_nll(self.query_embeds(batch["pixel_values"]), batch)
        return nll.sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    # ---- capabilities ------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        queries = self.query_embeds(self.pixel_values(images))
        bos = [tok.bos_token_id] if self.decoder_only and tok.bos_token_id is not None else []
        eos = [] if self.decoder_only else [tok.eos_token_id]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids, mask = _stack_padded([bos + self._ids(p) + eos for p in prompts], pad, left=self.decoder_only)
        if self.decoder_only:  # left padding: the pads go before the image's query tokens
            embeds, full = self._with_queries(queries, ids, mask)
            order = torch.argsort(full, dim=1, stable=True)  # zeros (pads) first, order kept
            embeds = torch.gather(embeds, 1, order[..., None].expand_as(embeds))
            full = torch.gather(full, 1, order)
        else:
            embeds, full = self._with_queries(queries, ids, mask)
        out = self._lm().generate(
            inputs_embeds=embeds,
            attention_mask=full,
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
            **self.settings.generation_kwargs(max_new_tokens),
        )
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    def generate_captions(self, images: Sequence[Any]) -> list[str]:
        s = self.settings
        return self._generate(images, [s.caption_prompt] * len(images), s.caption_max_new_tokens)

    def answer_questions(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        s = self.settings
        return self._generate(images, [s.vqa_prompt.format(q) for q in questions], s.vqa_max_new_tokens)

    @torch.no_grad()
    def rank_answers(self, images: Sequence[Any], questions: Sequence[str], candidates: Sequence[str]) -> list[str]:
        """The candidate with the highest log-likelihood (summed over its tokens and the end token)."""
        queries = self.query_embeds(self.pixel_values(images))
        space = " " if self.decoder_only else ""
        chosen = []
        for q, question in zip(queries, questions, strict=True):
            prompt = self.settings.vqa_prompt.format(question)
            batch = self.pair_batch([prompt] * len(candidates), [space + c for c in candidates])
            nll, _ = self.token_nll(q.expand(len(candidates), -1, -1), batch)
            chosen.append(candidates[int(nll.sum(dim=1).argmin())])
        return chosen


def install_t5_position_bias(t5: nn.Module) -> None:
    """Blocks after the first of each T5 stack get the stack's relative position bias when called without it.

    In a T5 stack, block 0 computes the relative position bias and the stack passes it on to later
    blocks. The sequential replay calls each later block with block 0's captured arguments, whose
    ``position_bias`` is None: without this hook those blocks would attend with a zero bias (the
    reference's bug, ECOFLAP_SPEC.md pitfall 3). A model forward always passes the bias: no change there.
    """
    for stack in (t5.encoder, t5.decoder):
        first = stack.block[0].layer[0].SelfAttention
        for block in list(stack.block)[1:]:
            block.register_forward_pre_hook(_position_bias_hook(first), with_kwargs=True)


def _position_bias_hook(attention: nn.Module) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        given = args[2] if len(args) > 2 else kwargs.get("position_bias")
        if given is not None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        length = hidden.shape[1]
        bias = attention.compute_bias(length, length, device=hidden.device).to(hidden.dtype)
        if mask is not None:
            bias = bias + mask[:, :, :, :length]
        if len(args) > 2:
            return (*args[:2], bias, *args[3:]), kwargs
        return args, kwargs | {"position_bias": bias}

    return hook


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


class ClipAdapter(ImageTextAdapter):
    """``CLIPModel``: towers ``vision`` and ``text``; symmetric contrastive loss over the batch."""

    kind = "clip"
    #: each sample's loss depends on the other samples of its batch (they are its negatives): score
    #: with one perturbation per micro-batch (``--zo-group`` equal to ``--micro-batch``)
    couples_samples: ClassVar[bool] = True

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [
            ("vision", list(self.model.vision_model.encoder.layers), "vision_model.encoder.layers"),
            ("text", list(self.model.text_model.encoder.layers), "text_model.encoder.layers"),
        ]

    def text_batch(self, captions: Sequence[str], seqlen: int, seed: int) -> Batch:
        limit = min(seqlen, self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, batch: Batch) -> Any:
        return self.model(**batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per sample: (CE of its image over the batch's captions + CE of its caption over the images) / 2."""
        logits = self.forward(batch).logits_per_image.float()
        target = torch.arange(logits.shape[0], device=logits.device)
        image_ce = F.cross_entropy(logits, target, reduction="none")
        text_ce = F.cross_entropy(logits.t(), target, reduction="none")
        return (image_ce + text_ce) / 2

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        return F.normalize(self.model.get_image_features(pixel_values=self.pixel_values(images)).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.text_batch(texts, self.model.config.text_config.max_position_embeddings, 0)
        return F.normalize(self.model.get_text_features(**batch).float(), dim=-1)


# ---------------------------------------------------------------------------------------------
# ViT classifier
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# tiny random models (tests)
# ---------------------------------------------------------------------------------------------

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


def tiny_t5_config() -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=259,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )


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


def _tiny_blip2(language: str) -> Callable[[Any], Any]:
    def build() -> tuple[nn.Module, Any, Any]:
        from transformers import Blip2ForConditionalGeneration

        return (
            Blip2ForConditionalGeneration(tiny_blip2_config(language)),
            tiny_image_processor("blip2"),
            byte_tokenizer(),
        )

    return build


def _tiny_clip() -> tuple[nn.Module, Any, Any]:
    from transformers import CLIPModel

    return CLIPModel(tiny_clip_config()), tiny_image_processor("clip"), clip_byte_tokenizer()


def _tiny_vit() -> tuple[nn.Module, Any, Any]:
    from transformers import ViTForImageClassification

    return ViTForImageClassification(tiny_vit_config()), tiny_image_processor("vit"), None


def _tiny_loader(name: str, adapter_cls: type[ImageTextAdapter], build: Callable[[], tuple[nn.Module, Any, Any]]):
    def load(options: LoadOptions) -> ImageTextAdapter:
        torch.manual_seed(int(options.extra.get("seed", 0)))
        model, processor, tokenizer = build()
        model.to(_torch_dtype(options.dtype))
        return adapter_cls(model, processor, tokenizer, name, targets=options.targets, ignore=options.ignore)

    return load


# ---------------------------------------------------------------------------------------------
# local folders
# ---------------------------------------------------------------------------------------------

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


@dataclass(frozen=True)
class FolderKind:
    """Which architectures one folder loader takes, and how it builds the adapter."""

    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    model_class: str
    adapter: type[ImageTextAdapter]
    needs_tokenizer: bool = True


FOLDERS = {
    "hf-blip2": FolderKind(
        ("Blip2ForConditionalGeneration",), ("blip-2",), "Blip2ForConditionalGeneration", Blip2Adapter
    ),
    "hf-clip": FolderKind(("CLIPModel",), ("clip",), "CLIPModel", ClipAdapter),
    "hf-vit": FolderKind(("ViTForImageClassification",), (), "ViTForImageClassification", VitAdapter, False),
}


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _matcher(kind: FolderKind) -> Callable[[Path], bool]:
    def matches(path: Path) -> bool:
        config = read_config(path)
        if any(a in kind.architectures for a in config.get("architectures") or []):
            return True
        return not config.get("architectures") and config.get("model_type") in kind.model_types

    return matches


def check_folder(path: Path, needs_tokenizer: bool) -> None:
    """A missing file -> one EcoflapError line naming it (before transformers says it its own way)."""
    if not path.is_dir():
        raise EcoflapError(f"model folder {path} does not exist")
    wanted = [("config.json",), WEIGHT_FILES, ("preprocessor_config.json",)]
    if needs_tokenizer:
        wanted.append(TOKENIZER_FILES)
    for names in wanted:
        if not any((path / n).is_file() for n in names):
            raise EcoflapError(f"model folder {path} has no {' or '.join(names)}")


def _folder_loader(kind: FolderKind) -> Callable[[LoadOptions], ImageTextAdapter]:
    def load(options: LoadOptions) -> ImageTextAdapter:
        import transformers

        path = Path(options.source).expanduser()
        check_folder(path, kind.needs_tokenizer)
        model_class = getattr(transformers, kind.model_class)
        try:
            model = model_class.from_pretrained(path, dtype=_torch_dtype(options.dtype), local_files_only=True)
            processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
            tokenizer = (
                transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
                if kind.needs_tokenizer
                else None
            )
        except (OSError, ValueError, KeyError) as exc:
            raise EcoflapError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
        return kind.adapter(model, processor, tokenizer, str(path), targets=options.targets, ignore=options.ignore)

    return load


@hookimpl
def register_models(register) -> None:
    register(
        ModelSpec(
            "tiny-blip2-opt",
            _tiny_loader("tiny-blip2-opt", Blip2Adapter, _tiny_blip2("opt")),
            "random BLIP-2 with a 2-block OPT (tests)",
        )
    )
    register(
        ModelSpec(
            "tiny-blip2-t5",
            _tiny_loader("tiny-blip2-t5", Blip2Adapter, _tiny_blip2("t5")),
            "random BLIP-2 with a 2+2-block T5 (tests)",
        )
    )
    register(ModelSpec("tiny-clip", _tiny_loader("tiny-clip", ClipAdapter, _tiny_clip), "random CLIP (tests)"))
    register(
        ModelSpec(
            "tiny-vit",
            _tiny_loader("tiny-vit", VitAdapter, _tiny_vit),
            "random ViT classifier over easy-vqa captions (tests)",
        )
    )
    for name, kind in FOLDERS.items():
        register(
            ModelSpec(name, _folder_loader(kind), f"a local Hugging Face {kind.model_class} folder", _matcher(kind))
        )
