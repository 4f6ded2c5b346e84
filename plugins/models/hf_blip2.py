"""BLIP-2 (``Blip2ForConditionalGeneration``, OPT or T5) as an ecoflap model adapter.

Towers: ``vision`` (vision_model.encoder.layers), then the language model: OPT -> one tower
``language`` (decoder layers); T5 -> two towers ``language-encoder`` and ``language-decoder``.
The decoder's first block is not fed by the encoder's last block (it reads the decoder's token
embeddings and cross-attends to the encoder output), and the sequential replay feeds each block
the previous block's output inside a tower: only two towers let each stack re-capture its own
first block's inputs (from a forward pass of the partly pruned model). Q-Former, query tokens,
language projection, embeddings and LM head are not in any tower, hence dense.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch
from ecoflap.plugins.models.hf_image_text import ImageTextAdapter, stack_padded


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
            ids, mask = stack_padded([p + t for p, t in zip(pre, tgt, strict=True)], pad)
            labels = torch.zeros_like(mask)
            for i, (p, t) in enumerate(zip(pre, tgt, strict=True)):
                labels[i, len(p) : len(p) + len(t)] = 1
            return {"text_ids": ids, "text_mask": mask, "label_mask": labels}
        prefix_ids, prefix_mask = stack_padded([p + [tok.eos_token_id] for p in pre], pad)
        target_ids, target_mask = stack_padded(tgt, pad)
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
        ids, mask = stack_padded([bos + self._ids(p) + eos for p in prompts], pad, left=self.decoder_only)
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
