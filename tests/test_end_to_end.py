"""The whole method on tiny random models: scores, allocation, sequential fine step, save, reload."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ecoflap.core.compress import Methods, compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.job import load_model, resolve_methods
from ecoflap.core.plugins import load_plugins
from ecoflap.core.scoring import ordered_blocks
from ecoflap.core.sequential import measure_sparsity
from ecoflap.plugins.pruners import WandaPruner

REGISTRIES = load_plugins()


def test_each_block_calibrates_on_the_already_pruned_blocks(make_adapter, toy_text) -> None:
    """The q_proj mask of block k equals Wanda's mask from inputs that passed the PRUNED blocks < k."""
    adapter = make_adapter("tiny-llama")
    dense = copy.deepcopy(adapter.model)
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    config = PruneConfig.build(model="tiny-llama", allocator="uniform", pruner="wanda", sparsity=0.5)
    compress(adapter, config, resolve_methods(REGISTRIES, config), batch)
    pruned_state = copy.deepcopy(adapter.model.state_dict())
    blocks = ordered_blocks(adapter.towers())
    for k in range(1, len(blocks)):
        probe = copy.deepcopy(adapter.model)
        dense_blocks = dense.model.layers[k:]
        for j, block in enumerate(dense_blocks, start=k):  # block k and later: dense again
            probe.model.layers[j].load_state_dict(block.state_dict())
        q_proj = probe.model.layers[k].self_attn.q_proj
        expected = WandaPruner(copy.deepcopy(q_proj), "row")
        handle = q_proj.register_forward_hook(lambda m, a, o, pruner=expected: pruner.add_batch(a[0], o))
        with torch.no_grad():
            for i in range(0, 4, config.micro_batch):
                probe.model(input_ids=batch["input_ids"][i : i + config.micro_batch])
        handle.remove()
        mask = expected.prune(0.5)
        actual = pruned_state[f"model.layers.{k}.self_attn.q_proj.weight"] == 0
        assert torch.equal(mask, actual), f"block {k}"


def test_wanda_replay_differs_from_dense_calibration(make_adapter, toy_text) -> None:
    """A wrong implementation that calibrates every block on dense inputs would give other masks."""
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    last = adapter.model.model.layers[-1].mlp.down_proj
    dense_stats = WandaPruner(copy.deepcopy(last), "row")
    handle = last.register_forward_hook(lambda m, a, o: dense_stats.add_batch(a[0], o))
    with torch.no_grad():
        adapter.forward(batch)
    handle.remove()
    config = PruneConfig.build(model="tiny-llama", allocator="uniform", pruner="wanda", sparsity=0.5)
    compress(adapter, config, resolve_methods(REGISTRIES, config), batch)
    assert not torch.equal(dense_stats.prune(0.5), last.weight == 0)


@pytest.mark.parametrize(
    ("kind", "scorer", "pruner", "nm"),
    [
        ("tiny-llama", "zeroth-order", "wanda", None),
        ("tiny-opt", "first-order", "sparsegpt", None),
        ("tiny-llama", None, "magnitude", "2:4"),
    ],
)
def test_prune_save_reload_same_outputs(tmp_path: Path, toy_corpus: Path, kind: str, scorer, pruner: str, nm) -> None:
    settings = {
        "model": kind,
        "corpus": str(toy_corpus),
        "pruner": pruner,
        "sparsity": 0.5,
        "nsamples": 4,
        "seqlen": 32,
    }
    if scorer:
        settings |= {"scorer": scorer, "allocator": "ecoflap", "granularity": "layer"}
    else:
        settings |= {"allocator": "uniform", "nm": nm}
    config = PruneConfig.build(**settings)
    out = tmp_path / "pruned"
    report = prune_job(config, out)
    allocation = json.loads((out / "allocation.json").read_text())
    measured = report["measured_per_layer"]
    assert set(allocation["sparsity"]) == set(measured)
    if nm:
        assert all(v == pytest.approx(0.5) for v in measured.values())
    else:
        assert report["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert len(set(allocation["sparsity"].values())) > 1  # scores made the layers differ
        assert max(measured.values()) <= 0.6 + 1 / 64
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(0))
    pruned = load_model(REGISTRIES, config)  # a fresh tiny model (same seed), then pruned weights
    pruned.model.load_state_dict(reloaded.state_dict())
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned.model(ids).logits)
    layers = {n: m for n, m in reloaded.named_modules() if n in measured}
    assert measure_sparsity(layers).per_layer() == pytest.approx(measured)


def prune_job(config: PruneConfig, out: Path) -> dict:
    """The core job's steps in their order: identify, coarse, allocation, fine, checkpoint (as the flow runs them)."""
    from ecoflap.core import job

    methods = job.resolve_methods(REGISTRIES, config)
    adapter = job.load_model(REGISTRIES, config)
    identity = job.identify(adapter, config)
    coarse = job.coarse_scores(adapter, config, methods) if methods.scorer else None
    sparsity = job.allocation(identity["layers"], config, methods, coarse and coarse["scores"])
    result = job.fine_step(adapter, config, methods, sparsity)
    report = job.report(config, identity, result, coarse)
    job.save_checkpoint(adapter, result, report, out)
    return report


def test_methods_resolve_before_the_model_loads() -> None:
    config = PruneConfig.build(model="tiny-llama", scorer="first-order")
    methods = resolve_methods(REGISTRIES, config)
    assert isinstance(methods, Methods) and methods.pruner is WandaPruner


def test_targets_and_ignore_select_the_prunable_layers(make_adapter) -> None:
    adapter = make_adapter("tiny-llama", targets=[r"\.mlp\."], ignore=[r"layers\.0\."])
    layers = adapter.prunable_layers()
    assert layers and all(".mlp." in n and "layers.0." not in n for n in layers)
    assert len(layers) == 3 * 3  # gate, up, down in blocks 1-3
    nothing = make_adapter("tiny-llama", targets=["no-such-layer"])
    with pytest.raises(EcoflapError, match="has no prunable linear layers"):
        nothing.towers()


def test_a_failed_save_leaves_the_previous_output_intact(tmp_path: Path, make_adapter) -> None:
    from ecoflap.core.allocation import Allocation
    from ecoflap.core.compress import PruneResult
    from ecoflap.core.job import save_checkpoint
    from ecoflap.core.sequential import LayerSparsity

    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    adapter = make_adapter("tiny-llama")

    def broken_save(path: Path) -> None:
        (path / "model.safetensors").write_text("half")
        raise OSError("disk full")

    adapter.save = broken_save
    result = PruneResult(Allocation({}), LayerSparsity())
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(adapter, result, {}, out)
    assert json.loads((out / "report.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind
