"""LLaVA (hf-llava folders) on a tiny random LLaVA written as a Hugging Face folder: towers, the scoring loss
against transformers' ``labels=`` path, block replay on real inputs, joint pruning through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.compress import Methods, compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets.easy_vqa import image_caption_pairs
from ecoflap.core.errors import EcoflapError
from ecoflap.core.scoring import ordered_blocks
from ecoflap.core.sequential import capture_inputs, prune_sequential, run_block
from ecoflap.plugins.allocators import EcoflapAllocator
from ecoflap.plugins.models.hf_llava import feature_blocks, is_llava_folder, load_folder
from ecoflap.plugins.pruners import WandaPruner
from ecoflap.plugins.scorers import FirstOrderScorer, ZerothOrderScorer
from ecoflap_tiny_models.llava import write_tiny_llava

ECOFLAP = [sys.executable, "-m", "ecoflap.pipelines.cli"]
VISION = "model.vision_tower.vision_model.encoder.layers"
LANGUAGE = "model.language_model.layers"
#: never pruned: the projector, the embeddings, the LM head, and vision block 2 (its output feeds nothing)
DENSE = ("model.multi_modal_projector.", "lm_head.", "embed", f"{VISION}.2.")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava")


@pytest.fixture(scope="module")
def pairs() -> list:
    return image_caption_pairs("train")[:40]


@pytest.fixture
def adapter(folder: Path):
    return load_folder(LoadOptions(str(folder)))


def test_feature_blocks_counts_the_blocks_before_the_feature_layer() -> None:
    assert feature_blocks(24, -2) == 23  # LLaVA-1.5: the second-to-last block's output
    assert feature_blocks(24, -1) == 24
    assert feature_blocks(24, [3, -2]) == 23
    assert feature_blocks(3, 0) == 0  # the embeddings alone


def test_towers_blocks_in_forward_order_and_dense_parts(adapter, pairs) -> None:
    towers = adapter.towers()
    assert [(t.name, [b.name for b in t.blocks]) for t in towers] == [
        ("vision", [f"{VISION}.0", f"{VISION}.1"]),
        ("language", [f"{LANGUAGE}.0", f"{LANGUAGE}.1", f"{LANGUAGE}.2"]),
    ]
    order: list[str] = []
    blocks = ordered_blocks(towers)
    handles = [b.module.register_forward_pre_hook(lambda m, a, n=b.name: order.append(n)) for b in blocks]
    with torch.no_grad():
        adapter.forward(adapter.calibration_batch(pairs, 2, 16, seed=0))
    for h in handles:
        h.remove()
    assert order == [b.name for b in blocks]
    prunable = adapter.prunable_layers()
    assert len(prunable) == 2 * 6 + 3 * 7  # CLIP: q k v out fc1 fc2; LLaMA: q k v o gate up down
    assert not [n for n in prunable if any(part in n for part in DENSE)]
    linears = {n for n, m in adapter.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for n in linears if n.startswith("model.multi_modal_projector.")}  # it exists, and stays dense


def test_the_unused_vision_block_changes_no_output(adapter, pairs) -> None:
    """Why vision block 2 is not in the tower: zeroing it leaves the loss exactly as it was."""
    batch = adapter.calibration_batch(pairs, 2, 16, seed=0)
    with torch.no_grad():
        before = adapter.loss(batch)
        for p in adapter.model.model.vision_tower.vision_model.encoder.layers[2].parameters():
            p.zero_()
        assert torch.equal(adapter.loss(batch), before)
        adapter.model.model.vision_tower.vision_model.encoder.layers[1].mlp.fc2.weight.zero_()
        assert not torch.equal(adapter.loss(batch), before)


def test_calibration_batch_holds_the_image_tokens_and_the_caption_as_target(adapter, pairs) -> None:
    batch = adapter.calibration_batch(pairs, 4, 64, seed=1)
    image_token = adapter.model.config.image_token_index
    assert ((batch["input_ids"] == image_token).sum(dim=1) == 16).all()  # (32 / 8)^2 patches, no class token
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    for row, labels, mask in zip(batch["input_ids"], batch["label_mask"], batch["attention_mask"], strict=True):
        target = adapter.tokenizer.decode(row[labels.bool()])
        prompt = adapter.tokenizer.decode(row[: int(labels.argmax())], skip_special_tokens=True)
        assert target.endswith("</s>") and target.startswith(" a ")
        assert target.removesuffix("</s>").strip() in {c for _, c in pairs}
        assert prompt.endswith("Write a short caption for the image. ASSISTANT:")
        assert int(labels.nonzero().max()) == int(mask.sum()) - 1  # the target runs to the last real token
    assert adapter.calibration_batch(pairs, 4, 64, seed=1)["input_ids"].equal(batch["input_ids"])  # seeded


def test_loss_equals_the_labels_path_of_transformers(adapter, pairs) -> None:
    """Each sample's loss is transformers' own ``labels=`` loss of that sample alone; padded batch or not."""
    batch = adapter.calibration_batch(pairs, 4, 64, seed=2)
    assert len(set(batch["attention_mask"].sum(dim=1).tolist())) > 1  # captions of different lengths: padding
    labels = batch["input_ids"].masked_fill(batch["label_mask"] == 0, -100)
    with torch.no_grad():
        ours = adapter.loss(batch)
        assert ours.shape == (4,) and len(set(ours.tolist())) == 4
        for i in range(4):
            n = int(batch["attention_mask"][i].sum())
            alone = adapter.model(
                input_ids=batch["input_ids"][i : i + 1, :n],
                pixel_values=batch["pixel_values"][i : i + 1],
                labels=labels[i : i + 1, :n],
            ).loss
            assert float(ours[i]) == pytest.approx(float(alone), rel=1e-5)
        whole = adapter.model(**{k: v for k, v in batch.items() if k != "label_mask"}, labels=labels).loss
    targets = batch["label_mask"][:, 1:].sum(dim=1)
    assert float((ours * targets).sum() / targets.sum()) == pytest.approx(float(whole), rel=1e-5)


def test_blocks_replay_with_the_inputs_of_a_full_forward_pass(adapter, pairs) -> None:
    """A tower's first block captured, each next block fed the previous one's output: every block sees
    what it sees inside the model's own forward pass (attention mask, rotary positions included)."""
    batch = adapter.calibration_batch(pairs, 3, 64, seed=3)
    for tower in adapter.towers():
        seen: list[torch.Tensor] = []
        hooks = [b.module.register_forward_pre_hook(_keep_hidden(seen), with_kwargs=True) for b in tower.blocks]
        with torch.no_grad():
            adapter.forward(batch)
            for h in hooks:
                h.remove()
            inputs = [capture_inputs(adapter, tower.blocks[0], batch)]
            for k, block in enumerate(tower.blocks):
                assert torch.equal(inputs[0].hidden, seen[k]), f"{tower.name} block {k}"
                inputs = run_block(block, inputs)


def _keep_hidden(seen: list[torch.Tensor]):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])

    return hook


def test_the_fine_step_calibrates_each_layer_on_its_inputs_in_the_partly_pruned_model(adapter, pairs) -> None:
    """Wanda's statistics of every linear come from the inputs that linear receives in a forward pass of
    the model as it stands then (the blocks before it pruned): the language tower sees the pruned vision."""
    batch = adapter.calibration_batch(pairs, 4, 64, seed=4)
    towers = adapter.towers()
    first_language = towers[1].blocks[0].linears[f"{LANGUAGE}.0.self_attn.q_proj"]
    dense_input = _layer_inputs(adapter, first_language, batch)
    expected: dict[str, torch.Tensor] = {}
    fed: dict[str, list[torch.Tensor]] = {}
    names = {lin: n for n, lin in adapter.prunable_layers().items()}

    class Recording(WandaPruner):
        def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
            fed.setdefault(names[self.layer], []).append(inp.clone())
            super().add_batch(inp, out)

    def make_pruner(layer: torch.nn.Linear, comparison: str) -> WandaPruner:
        expected[names[layer]] = _layer_inputs(adapter, layer, batch)  # earlier blocks pruned, this one not yet
        return Recording(layer, comparison)

    sparsity = dict.fromkeys(adapter.prunable_layers(), 0.5)
    prune_sequential(adapter, towers, batch, sparsity, make_pruner, micro_batch=2)
    assert set(fed) == set(expected) == set(sparsity)
    for name, inputs in fed.items():
        got = torch.cat(inputs).reshape(expected[name].shape)
        assert torch.allclose(got, expected[name], atol=1e-5), name
    assert not torch.allclose(expected[f"{LANGUAGE}.0.self_attn.q_proj"], dense_input, atol=1e-3)


def _layer_inputs(adapter, layer: torch.nn.Linear, batch) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    with torch.no_grad():
        adapter.forward(batch)
    handle.remove()
    return seen[0]


def test_first_order_scores_are_the_per_sample_gradients_of_the_loss(adapter, pairs) -> None:
    """Both towers get scores from gradients that flow through the projector: |W| * mean_b |dL_b/dW|, summed."""
    batch = adapter.calibration_batch(pairs, 2, 32, seed=5)
    scores = FirstOrderScorer(micro_batch=4).score(adapter, adapter.towers(), batch)
    assert set(scores) == set(adapter.prunable_layers()) and all(s > 0 for s in scores.values())
    for name in (f"{VISION}.0.mlp.fc1", f"{LANGUAGE}.2.self_attn.v_proj"):
        weight = adapter.prunable_layers()[name].weight
        grads = []
        for b in range(2):
            adapter.model.zero_grad()
            adapter.loss({k: v[b : b + 1] for k, v in batch.items()}).sum().backward()
            grads.append(weight.grad.abs().clone())
        expected = float((weight.detach().abs() * torch.stack(grads).mean(dim=0)).sum())
        assert scores[name] == pytest.approx(expected, rel=1e-4), name


def test_joint_pruning_then_save_and_reload_gives_the_same_outputs(adapter, pairs, tmp_path: Path) -> None:
    config = PruneConfig(model="hf-llava", sparsity=0.5, nsamples=8, score_nsamples=4, micro_batch=4)
    batch = adapter.calibration_batch(pairs, 8, 64, seed=0)
    methods = Methods(ZerothOrderScorer(seed=0, micro_batch=4), EcoflapAllocator(), WandaPruner)
    result = compress(adapter, config, methods, batch)
    assert abs(result.measured.overall() - 0.5) < 0.02
    adapter.save(tmp_path / "pruned")
    again = load_folder(LoadOptions(str(tmp_path / "pruned")))
    with torch.no_grad():
        assert torch.equal(adapter.loss(batch), again.loss(batch))
        assert torch.equal(adapter.forward(batch).last_hidden_state, again.forward(batch).last_hidden_state)
    for name, layer in again.prunable_layers().items():
        assert torch.equal(layer.weight, adapter.prunable_layers()[name].weight), name


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"OMP_NUM_THREADS": "1", "ECOFLAP_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([*ECOFLAP, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow  # a CLI run in a fresh process: minutes on two cores
def test_cli_prunes_both_towers_with_one_budget(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        "prune", "--model", str(folder), "--scorer", "zeroth-order", "--allocator", "ecoflap", "--pruner", "wanda",
        "--sparsity", "0.5", "--nsamples", "8", "--score-nsamples", "4", "--seqlen", "32", "--score-seqlen", "32",
        "--no-eval", "-o", str(out), "--db", f"sqlite:///{tmp_path / 'results.db'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    dense = load_folder(LoadOptions(str(folder))).model.state_dict()
    assert is_llava_folder(out)
    pruned = load_folder(LoadOptions(str(out))).model.state_dict()  # the checkpoint reloads through from_pretrained
    layers = {info["name"]: info for info in report["layers"]}
    assert {info["tower"] for info in layers.values()} == {"vision", "language"}
    assert set(report["scores"]) == set(layers) and all(s > 0 for s in report["scores"].values())
    towers = report["per_tower"]
    total = sum(t["params"] for t in towers.values())
    assert sum(t["allocated"] * t["params"] for t in towers.values()) / total == pytest.approx(0.5, abs=1e-3)
    assert towers["vision"]["allocated"] != pytest.approx(towers["language"]["allocated"], abs=1e-3)
    assert not report["config"]["per_tower"]
    zeros = sum(int((pruned[f"{n}.weight"] == 0).sum()) for n in layers)
    assert abs(zeros / sum(info["size"] for info in layers.values()) - 0.5) < 0.02
    assert abs(report["measured_sparsity"] - 0.5) < 0.02
    pruned_weights = {f"{n}.weight" for n in layers}
    assert [n for n in dense if any(part in n for part in DENSE)]
    for name, tensor in dense.items():  # the projector and everything else outside the pruned weights: as it was
        if name not in pruned_weights:
            assert torch.equal(pruned[name], tensor), name


def test_a_folder_without_its_processor_is_one_clear_line(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in folder.iterdir():
        if file.name != "processor_config.json":
            (broken / file.name).symlink_to(file)
    with pytest.raises(EcoflapError, match=f"cannot load the model in {broken}: no LLaVA processor"):
        load_folder(LoadOptions(str(broken)))
    (broken / "model.safetensors").unlink()
    proc = run_cli("prune", "--model", str(broken), "--no-eval", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"Error: cannot load the model in {broken}: no model.safetensors or model.safetensors.index.json "
        "or pytorch_model.bin or pytorch_model.bin.index.json"
    )
