"""`ecoflap zoo train mini-blip2`: seeded data order, schedule, resumable training, and the shipped bridge's record."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.job import resolve_model
from ecoflap.core.plugins import load_plugins
from ecoflap.plugins.models import mini_blip2_train as training
from ecoflap.plugins.models.mini_blip2 import train_zoo_model
from ecoflap.plugins.models.mini_blip2_model import GenerationConfig, bridge_config, load_bridge
from ecoflap.plugins.models.mini_blip2_train import Example, TrainConfig, learning_rate, step_batch, train_bridge
from ecoflap.plugins.models.mini_common import WEIGHTS
from ecoflap_tiny_models.mini import tiny_mini_blip2

VQA = [Example(i % 7, f"Is it {i}?", f"Question: Is it {i}? Short answer:", " yes\n") for i in range(40)]
CAPTIONS = [Example(i, "A short caption:", "A short caption:", f" shape {i}\n") for i in range(7)]


def test_a_step_batch_depends_on_seed_and_step_only() -> None:
    config = TrainConfig(batch_size=20, caption_share=0.15)
    batch = step_batch(config, 5, VQA, CAPTIONS)
    assert batch == step_batch(config, 5, VQA, CAPTIONS)
    assert batch != step_batch(config, 6, VQA, CAPTIONS)
    assert batch != step_batch(TrainConfig(batch_size=20, seed=1), 5, VQA, CAPTIONS)
    assert sum(e in CAPTIONS for e in batch) == 3 and len(batch) == 20


def test_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    config = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 10) == pytest.approx(1e-3)
    assert learning_rate(config, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(config, 100) == pytest.approx(1e-4)


def _config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=6, warmup=2, checkpoint_every=1)


def _train(steps: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    adapter = tiny_mini_blip2(LoadOptions("tiny-mini-blip2"))
    features = {i: torch.randn(5, 32, generator=torch.Generator().manual_seed(i)) for i in range(7)}
    monkeypatch.setattr(training, "image_features", lambda *args, **kwargs: features)
    monkeypatch.setattr(training, "examples", lambda *args, **kwargs: (VQA, CAPTIONS))
    generation = GenerationConfig(image_size=32)
    record = train_bridge(adapter.model, adapter.tokenizer, _config(steps), generation, log=lambda _: None)
    assert record["steps"] == steps
    return {k: v.clone() for k, v in adapter.model.bridge.state_dict().items()}


def test_a_stopped_run_resumes_to_the_same_bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path / "straight"))
    straight = _train(4, monkeypatch)
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path / "resumed"))
    # a run of the same settings stopped after step 2: its checkpoint is what a killed run leaves
    halfway = _train(2, monkeypatch)
    state = torch.load(training._checkpoint_path())
    state["config"], state["schedules"] = asdict(_config(4)), [4]
    torch.save(state, training._checkpoint_path())
    resumed = _train(4, monkeypatch)
    assert any(not torch.equal(halfway[k], straight[k]) for k in straight)
    assert torch.load(training._checkpoint_path())["schedules"] == [4]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_an_extended_run_records_both_schedules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path))
    _train(2, monkeypatch)
    _train(3, monkeypatch)
    assert torch.load(training._checkpoint_path())["schedules"] == [2, 3]


def test_the_shipped_bridge_records_the_commands_that_made_it() -> None:
    """The default settings, run to the default step count and then extended (the command, repeated)."""
    meta = json.loads((WEIGHTS / "mini_blip2_bridge.json").read_text())
    record = meta["record"]
    schedules = record["schedules"]
    assert schedules[0] == TrainConfig.steps and record["steps"] == schedules[-1] == len(record["losses"])
    assert meta["train"] == asdict(TrainConfig(steps=schedules[-1]))
    commands = [f"ecoflap zoo train mini-blip2 --steps {n} --lr {TrainConfig.lr:g} --seed 0" for n in schedules]
    assert meta["command"] == " && ".join(commands)


def test_a_bad_learning_rate_is_one_line() -> None:
    root = Path(__file__).parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "ecoflap.pipelines.cli", "zoo", "train", "mini-blip2", "--lr", "0"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "Error: --steps must be >= 1, --batch-size >= 2 and --lr > 0"


def test_the_shipped_bridge_sidecar_carries_the_weights_sha256() -> None:
    meta = json.loads((WEIGHTS / "mini_blip2_bridge.json").read_text())
    assert meta["sha256"] == hashlib.sha256((WEIGHTS / "mini_blip2_bridge.safetensors").read_bytes()).hexdigest()


def _package_weights() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(WEIGHTS.iterdir())}


def _tiny_untrained(monkeypatch: pytest.MonkeyPatch) -> None:
    """``zoo train mini-blip2``'s model, data and features: tiny and random instead of DINOv2 + SmolLM2."""
    adapter = tiny_mini_blip2(LoadOptions("tiny-mini-blip2"))
    features = {i: torch.randn(5, 32, generator=torch.Generator().manual_seed(i)) for i in range(7)}
    monkeypatch.setattr(training, "build_untrained", lambda config, seed: (adapter.model, adapter.tokenizer))
    monkeypatch.setattr(training, "image_features", lambda *args, **kwargs: features)
    monkeypatch.setattr(training, "examples", lambda *args, **kwargs: (VQA, CAPTIONS))


@pytest.mark.parametrize("given", [False, True])
def test_zoo_train_writes_to_the_cache_or_the_given_folder_never_the_package(
    given: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path / "cache"))
    _tiny_untrained(monkeypatch)
    shipped = _package_weights()
    out = tmp_path / "mine" if given else None
    written = train_zoo_model("mini-blip2", out, 2, 6, None, 0, log=lambda _: None)
    folder = out if given else tmp_path / "cache" / "zoo" / "mini-blip2"
    assert written == folder / "mini_blip2_bridge.safetensors" and _package_weights() == shipped
    meta = json.loads((folder / "mini_blip2_bridge.json").read_text())
    assert meta["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest() and meta["record"]["steps"] == 2
    assert resolve_model(load_plugins(), str(folder)).name == "mini-blip2-trained"  # --model FOLDER loads it
    assert load_bridge(written, bridge_config(folder)).config.d_model == 32  # the trained tiny one, not the shipped


def test_zoo_train_help_says_where_it_writes_and_how_to_use_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ecoflap.pipelines.cli", "zoo", "train", "--help"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120,
    )  # fmt: skip
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "-o, --output" in text and "never overwritten" in text and "--model" in text
