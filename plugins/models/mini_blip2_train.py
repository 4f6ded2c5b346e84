"""``ecoflap zoo train mini-blip2``: train the bridge of mini-blip2 on easy-vqa's training split.

Only the bridge learns (2.5 M parameters); DINOv2-S and SmolLM2 stay frozen, as in BLIP-2. The frozen
image features are computed once and cached; the language model sees short sequences (8 soft
tokens + "Question: ... Short answer:" + the answer). Training data: every training question with
its answer, and one caption per training image ("a red circle", from the image's colour and shape).
Seeded and resumable: a checkpoint (bridge, optimiser, schedule, step) is written atomically every
``checkpoint_every`` steps and picked up by the same command.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.cache import cache_dir
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import file_sha256, git_hash, write_file
from ecoflap.plugins.models.dinov2_onnx import dinov2_small_folder
from ecoflap.plugins.models.hf_causal_lm import smollm2_folder
from ecoflap.plugins.models.mini_blip2_model import (
    BRIDGE_FILE,
    BRIDGE_META,
    BridgeConfig,
    GenerationConfig,
    MiniBlip2,
    QFormerBridge,
    bridge_state,
    text_batch,
)
from ecoflap.plugins.models.mini_common import image_features


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 24
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 30
    min_lr_ratio: float = 0.1
    seed: int = 0
    checkpoint_every: int = 25
    caption_share: float = 0.15  # of each batch, drawn from the caption examples


@dataclass(frozen=True)
class Example:
    image_id: int
    instruction: str
    prompt: str
    target: str


def examples(split: str, generation: GenerationConfig) -> tuple[list[Example], list[Example]]:
    """(VQA examples, caption examples) of ``split``."""
    from ecoflap.core.datasets import easy_vqa

    end = generation.answer_end
    vqa = [
        Example(q.image_id, q.question, generation.vqa_prompt.format(q.question), f" {q.answer}{end}")
        for q in easy_vqa.questions(split)
    ]
    captions = [
        Example(i, generation.caption_prompt, generation.caption_prompt, f" {easy_vqa.caption(*label)}{end}")
        for i, label in easy_vqa.image_labels(split).items()
    ]
    return vqa, captions


def step_batch(config: TrainConfig, step: int, vqa: list[Example], captions: list[Example]) -> list[Example]:
    """The examples of one step: a function of (seed, step) only, so a resumed run sees the same data."""
    rng = random.Random(f"{config.seed}/{step}")
    n_caption = round(config.batch_size * config.caption_share)
    return rng.sample(vqa, config.batch_size - n_caption) + rng.sample(captions, n_caption)


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _checkpoint_path() -> Path:
    return cache_dir() / "zoo" / "mini-blip2" / "checkpoint.pt"


def _save_checkpoint(
    bridge: QFormerBridge, optimizer: Any, step: int, config: TrainConfig, losses: list, schedules: list[int]
) -> None:
    path = _checkpoint_path()
    state = {"bridge": bridge.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    state |= {"config": asdict(config), "losses": losses, "schedules": schedules}
    write_file(path, lambda tmp: torch.save(state, tmp))


def _resume(bridge: QFormerBridge, optimizer: Any, config: TrainConfig, log: Any) -> tuple[int, list, list[int]]:
    """(step, losses, schedules): ``schedules`` lists the --steps of each run that led here, so an
    extended run records how it was made (its learning rate restarted when it was extended)."""
    path = _checkpoint_path()
    if not path.is_file():
        return 0, [], [config.steps]
    state = torch.load(path)
    same = {k: v for k, v in state["config"].items() if k != "steps"} == {
        k: v for k, v in asdict(config).items() if k != "steps"
    }
    if not same or state["step"] > config.steps:
        log(f"ignoring checkpoint {path}: it was made with other settings ({state['config']})")
        return 0, [], [config.steps]
    bridge.load_state_dict(state["bridge"])
    optimizer.load_state_dict(state["optimizer"])
    schedules = state.get("schedules", [state["config"]["steps"]])
    if state["config"]["steps"] != config.steps:  # a longer run: the cosine schedule restarts from here
        log(f"extending a {state['config']['steps']}-step run to {config.steps} steps")
        schedules = [*schedules, config.steps]
    log(f"resuming from step {state['step']} ({path})")
    return state["step"], state["losses"], schedules


def train_bridge(
    model: MiniBlip2,
    tokenizer: Any,
    config: TrainConfig,
    generation: GenerationConfig,
    log: Any = print,
) -> dict[str, Any]:
    """Train ``model.bridge`` in place; returns the training record."""
    torch.manual_seed(config.seed)
    features = image_features(model.vision, "train", generation.image_size, log)
    vqa, captions = examples("train", generation)
    bridge = model.bridge.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(bridge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, losses, schedules = _resume(bridge, optimizer, config, log)
    start = time.perf_counter()
    first = step
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        chosen = step_batch(config, step, vqa, captions)
        batch = text_batch(
            tokenizer,
            [e.instruction for e in chosen],
            [e.prompt for e in chosen],
            [e.target for e in chosen],
            bridge.config.max_instruction_tokens,
        )
        feats = torch.stack([features[e.image_id] for e in chosen]).float()
        loss = model.target_loss(batch, feats).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(round(loss.item(), 4))
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(bridge, optimizer, step, config, losses, schedules)
        elapsed = time.perf_counter() - start
        eta = elapsed / (step - first) * (config.steps - step)
        recent = sum(losses[-25:]) / len(losses[-25:])
        log(f"step {step}/{config.steps} loss {recent:.4f} lr {learning_rate(config, step - 1):.2e} eta {eta:.0f} s")
    bridge.eval().requires_grad_(False)
    return {
        "steps": step,
        "schedules": schedules,
        "final_loss_25": sum(losses[-25:]) / max(len(losses[-25:]), 1),
        "losses": losses,
        "seconds_this_run": round(time.perf_counter() - start, 1),
    }


def write_weights(bridge: QFormerBridge, record: dict[str, Any], config: TrainConfig, out: Path) -> Path:
    """The bridge in fp16 safetensors + its settings and training record, side by side."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in bridge_state(bridge).items()}, out / BRIDGE_FILE)
    meta = {
        "sha256": file_sha256(out / BRIDGE_FILE),
        "bridge": asdict(bridge.config),
        "train": asdict(config),
        "record": record,
        "data": "easy-vqa==1.0 train split: questions + one caption per image",
        "command": " && ".join(
            f"ecoflap zoo train mini-blip2 --steps {steps} --lr {config.lr:g} --seed {config.seed}"
            for steps in record["schedules"]
        ),
        "git_hash": git_hash(),
        "parameters": sum(p.numel() for p in bridge.parameters()),
    }
    (out / BRIDGE_META).write_text(json.dumps(meta, indent=1))
    return out / BRIDGE_FILE


def build_untrained(bridge_config: BridgeConfig, seed: int) -> tuple[MiniBlip2, Any]:
    """DINOv2-S + a freshly initialised bridge + SmolLM2, frozen towers."""
    from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

    torch.manual_seed(seed)
    bridge = QFormerBridge(bridge_config)
    vision = Dinov2Model.from_pretrained(dinov2_small_folder(), dtype=torch.float32).eval()
    language = LlamaForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32).eval()
    model = MiniBlip2(vision, bridge, language)
    model.vision.requires_grad_(False)
    model.language.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(smollm2_folder())


def train(config: TrainConfig, out: Path, log: Any = print) -> Path:
    """Train a bridge and write it into ``out`` (the cache's zoo/mini-blip2 from the command, never the package)."""
    if config.steps < 1 or config.batch_size < 2 or not config.lr > 0:
        raise EcoflapError("--steps must be >= 1, --batch-size >= 2 and --lr > 0")
    model, tokenizer = build_untrained(BridgeConfig(), config.seed)
    record = train_bridge(model, tokenizer, config, GenerationConfig(), log)
    return write_weights(model.bridge, record, config, out)
