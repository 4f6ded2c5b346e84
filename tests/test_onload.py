"""Block-by-block onloading (--offload cpu): the same masks as the whole model in memory, with each block on
the execution device only while it is pruned (on this CPU-only machine the device is the CPU, so the tests
check the bookkeeping: which block is onloaded when, and that the others stay where they are stored)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from ecoflap.core import job
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.onload import Onloader
from ecoflap.core.plugins import load_plugins
from ecoflap.plugins.pruners import WandaPruner

REGISTRIES = load_plugins()


def settings(model: str, corpus: Path, **more) -> dict:
    small = {"nsamples": 4, "seqlen": 32, "score_nsamples": 2, "score_seqlen": 16, "micro_batch": 2}
    text = {"corpus": str(corpus)} if model in ("tiny-llama", "tiny-opt") else {}
    return {"model": model, "device": "cpu", "granularity": "layer"} | small | text | more


def prune(config: PruneConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The job's steps on one loaded model: the pruned weights and the coarse scores."""
    methods = job.resolve_methods(REGISTRIES, config)
    adapter = job.load_model(REGISTRIES, config, offload=True)
    identity = job.identify(adapter, config)
    coarse = job.coarse_scores(adapter, config, methods) if methods.scorer else None
    scores = coarse["scores"] if coarse else None
    job.fine_step(adapter, config, methods, job.allocation(identity["layers"], config, methods, scores))
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}, scores or {}


@pytest.mark.parametrize(
    ("model", "pruner", "towers"),
    [
        ("tiny-llama", "wanda", []),
        ("tiny-llama", "sparsegpt", []),
        ("tiny-blip2-opt", "wanda", []),
        ("tiny-mini-blip2", "sparsegpt", ["vision"]),
    ],
)
def test_onloaded_fine_step_gives_the_masks_in_memory(toy_corpus: Path, model: str, pruner: str, towers) -> None:
    base = settings(model, toy_corpus, pruner=pruner, towers=towers)
    in_memory, scores = prune(PruneConfig.build(**base))
    onloaded, onloaded_scores = prune(PruneConfig.build(**base, offload="cpu"))
    assert onloaded_scores == scores  # zeroth-order scoring through onloaded blocks: the same forward passes
    assert in_memory.keys() == onloaded.keys()
    for name, weight in in_memory.items():
        assert torch.equal(weight, onloaded[name]), name
    assert sum(int((w == 0).sum()) for w in onloaded.values()) > 0


class Watching(WandaPruner):
    """Wanda, noting which blocks the onloader holds on the device whenever a layer is pruned."""

    onloader: Onloader
    seen: list[tuple[int, ...]] = []

    def prune(self, sparsity, pattern=None):
        Watching.seen.append(tuple(sorted(self.onloader.onloaded)))
        return super().prune(sparsity, pattern)


def test_only_the_block_being_pruned_is_onloaded(toy_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = PruneConfig.build(**settings("tiny-llama", toy_corpus, allocator="uniform", offload="cpu"))
    adapter = job.load_model(REGISTRIES, config, offload=True)
    onloader = adapter.onloader
    assert onloader is not None and onloader.onloaded == set()  # nothing on the device before the step
    blocks = [b.module for t in adapter.towers() for b in t.blocks]
    Watching.onloader, Watching.seen = onloader, []
    methods = job.resolve_methods(REGISTRIES, config)
    methods.pruner = Watching
    identity = job.identify(adapter, config)
    job.fine_step(adapter, config, methods, job.allocation(identity["layers"], config, methods, None))
    per_block = len(adapter.towers()[0].blocks[0].linears)
    assert Watching.seen == [(id(block),) for block in blocks for _ in range(per_block)]
    assert onloader.onloaded == set()  # every block back where it is stored
    assert onloader.moves >= len(blocks)


def test_a_forward_pass_onloads_each_block_while_it_runs() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4), nn.Linear(4, 2))
    onloader = Onloader(model, [model[1], model[2]], torch.device("cpu"))
    during: list[set[int]] = []
    for module in (model[0], model[1][0], model[2], model[3]):
        module.register_forward_pre_hook(lambda m, a: during.append(set(onloader.onloaded)))
    model(torch.ones(1, 4))
    assert during == [set(), {id(model[1])}, {id(model[2])}, set()]
    assert onloader.moves == 2 and onloader.onloaded == set()
    with onloader.held(model[2]):
        model(torch.ones(1, 4))
        assert onloader.onloaded == {id(model[2])}  # held: stays after its forward
    assert onloader.onloaded == set() and onloader.moves == 4


def test_first_order_scoring_with_offload_is_one_error(toy_corpus: Path) -> None:
    config = PruneConfig.build(**settings("tiny-llama", toy_corpus, scorer="first-order", offload="cpu"))
    with pytest.raises(EcoflapError, match="first-order scoring needs the whole model"):
        job.resolve_methods(REGISTRIES, config)


def test_offload_is_not_part_of_the_method_identity() -> None:
    """Onloading moves the same computation around: the pruned model and its keys are the same."""
    assert PruneConfig(offload="cpu").method() == PruneConfig().method()


def test_zeroth_order_onloads_only_the_blocks_it_computes(toy_corpus: Path) -> None:
    """The blocks before the perturbed one replay cached outputs: they are never moved to the device for it."""
    from ecoflap.core.scoring import zeroth_order_scores

    config = PruneConfig.build(**settings("tiny-llama", toy_corpus, offload="cpu"))
    adapter = job.load_model(REGISTRIES, config, offload=True)
    towers = adapter.towers()
    blocks = [b for t in towers for b in t.blocks]
    batch = job.calibration_batch(adapter, config, 2, 16)
    zeroth_order_scores(adapter, towers, batch, micro_batch=2)
    n = len(blocks)
    # per micro-batch: one capture pass over every block, then two passes per layer from its own block on
    expected = n + sum(2 * (n - k) * len(block.linears) for k, block in enumerate(blocks))
    assert adapter.onloader.moves == expected
    assert adapter.onloader.onloaded == set()


# ---- --offload disk: the blocks' weights stay in the model's files ------------------------------------------
@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    job.load_model(REGISTRIES, PruneConfig(model="tiny-llama", device="cpu")).save(folder)
    return folder


class Counting(WandaPruner):
    """Wanda, noting how many of the model's block parameters are in memory (not meta) whenever it prunes."""

    blocks: list[nn.Module]
    in_memory: list[int] = []

    def prune(self, sparsity, pattern=None):
        Counting.in_memory.append(sum(not p.is_meta for b in Counting.blocks for p in b.parameters()))
        return super().prune(sparsity, pattern)


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_disk_offload_gives_the_masks_in_memory(llama_folder: Path, toy_corpus: Path, pruner: str) -> None:
    base = settings("tiny-llama", toy_corpus, pruner=pruner) | {"model": str(llama_folder)}
    in_memory, scores = prune_offloaded(PruneConfig.build(**base), None)
    on_disk, disk_scores = prune_offloaded(PruneConfig.build(**base, offload="disk"), llama_folder)
    assert disk_scores == scores
    assert on_disk.keys() == in_memory.keys()
    for name, weight in in_memory.items():
        assert torch.equal(weight, on_disk[name]), name


def prune_offloaded(config: PruneConfig, folder: Path | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Pruned as ``ecoflap prune`` does (the layers from the dense model's identity), saved, and read back."""
    methods = job.resolve_methods(REGISTRIES, config)
    layers = job.identify(job.load_model(REGISTRIES, config), config)["layers"]
    adapter = job.load_model(REGISTRIES, config, offload=True)
    coarse = job.coarse_scores(adapter, config, methods)
    job.fine_step(adapter, config, methods, job.allocation(layers, config, methods, coarse["scores"]))
    out = Path(tempfile.mkdtemp())
    adapter.save(out)
    reloaded = job.load_model(REGISTRIES, config.model_copy(update={"offload": "none"}), str(out))
    return {k: v.clone() for k, v in reloaded.model.state_dict().items()}, coarse["scores"]


def test_disk_offload_holds_one_block_in_memory(llama_folder: Path, toy_corpus: Path) -> None:
    config = PruneConfig.build(**settings("tiny-llama", toy_corpus, allocator="uniform", offload="disk")
                               | {"model": str(llama_folder)})  # fmt: skip
    layers = job.identify(job.load_model(REGISTRIES, config), config)["layers"]
    adapter = job.load_model(REGISTRIES, config, offload=True)
    blocks = [b.module for t in adapter.towers() for b in t.blocks]
    per_block = sum(1 for _ in blocks[0].parameters())
    assert all(p.is_meta for b in blocks for p in b.parameters())  # loaded: no block read yet
    assert not any(p.is_meta for p in adapter.model.get_input_embeddings().parameters())
    Counting.blocks, Counting.in_memory = blocks, []
    methods = job.resolve_methods(REGISTRIES, config)
    methods.pruner = Counting
    job.fine_step(adapter, config, methods, job.allocation(layers, config, methods, None))
    assert Counting.in_memory and set(Counting.in_memory) == {per_block}  # the block being pruned, no other
    assert all(p.is_meta for b in blocks for p in b.parameters())  # pruned blocks written back to disk


def test_disk_offload_needs_a_loader_that_leaves_blocks_on_disk(toy_corpus: Path) -> None:
    config = PruneConfig.build(**settings("tiny-llama", toy_corpus, offload="disk"))
    with pytest.raises(EcoflapError, match="cannot leave its blocks on disk"):
        job.load_model(REGISTRIES, config, offload=True)


def test_disk_offload_hashes_the_weights_of_the_model_in_memory(llama_folder: Path) -> None:
    """The identify step under --offload disk reads the blocks one tensor at a time: same hash, blocks never loaded."""
    from ecoflap.core.provenance import weights_hash

    in_memory = job.load_model(REGISTRIES, PruneConfig(model=str(llama_folder), device="cpu"))
    disk = PruneConfig(model=str(llama_folder), device="cpu", offload="disk")
    on_disk = job.load_model(REGISTRIES, disk, offload=True)
    blocks = [p for tower in on_disk.towers() for block in tower.blocks for p in block.module.parameters()]
    assert weights_hash(on_disk.model, on_disk.stored_tensor) == weights_hash(in_memory.model)
    assert all(p.is_meta for p in blocks)
    with pytest.raises(ValueError, match="meta device"):
        weights_hash(on_disk.model)
