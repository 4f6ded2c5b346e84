"""FINE step: layer-wise pruning block by block, each block calibrated on the outputs of the
already-pruned blocks before it (Wanda / SparseGPT replay; ECOFLAP_SPEC.md section 3).

Towers go in forward order; each tower re-captures its first block's inputs with a forward pass of
the partly pruned model, so a language tower calibrates on the pruned vision tower's outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ecoflap.core.adapters import Batch, Block, ModelAdapter, Tower, split_batch
from ecoflap.core.onload import Onloader
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.pruning import Comparison, LayerPruner, MaskRefiner, NMPattern

PrunerFactory = Callable[[nn.Linear, str], LayerPruner]
RefinerFactory = Callable[[nn.Linear, str], MaskRefiner]


class _Captured(Exception):
    """Stops a forward pass once the inputs of the block of interest are recorded."""


@dataclass
class BlockInput:
    """The positional and keyword arguments one block received for one micro-batch."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockInput:
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, self.kwargs | {"hidden_states": hidden})


@dataclass
class LayerSparsity:
    """Measured after pruning: the zeros actually in each weight (a target is not a result)."""

    zeros: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, weight: torch.Tensor) -> None:
        self.zeros[name] = int((weight == 0).sum())
        self.sizes[name] = weight.numel()

    def per_layer(self) -> dict[str, float]:
        return {n: self.zeros[n] / self.sizes[n] for n in self.zeros}

    def overall(self) -> float:
        return sum(self.zeros.values()) / max(sum(self.sizes.values()), 1)


def measure_sparsity(layers: dict[str, nn.Linear]) -> LayerSparsity:
    measured = LayerSparsity()
    for name, layer in layers.items():
        measured.record(name, layer.weight)
    return measured


def capture_inputs(adapter: ModelAdapter, block: Block, batch: Batch) -> BlockInput:
    """Run the model until ``block`` and record what it receives."""
    seen: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(BlockInput(args, dict(kwargs)))
        raise _Captured

    handle = block.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        adapter.forward(batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def run_block(block: Block, inputs: Sequence[BlockInput]) -> list[BlockInput]:
    """The block's outputs, as the next block's inputs."""
    outputs = []
    for inp in inputs:
        out = block.module(*inp.args, **inp.kwargs)
        outputs.append(inp.with_hidden(out[0] if isinstance(out, (tuple, list)) else out))
    return outputs


def collect_statistics(
    block: Block,
    pruners: dict[str, LayerPruner],
    inputs: Sequence[BlockInput],
    refiners: dict[str, MaskRefiner] | None = None,
) -> None:
    """One pass of the (still dense) block with each pruner's (and refiner's) ``add_batch`` on its layer's inputs."""
    groups: tuple[dict[str, Any], ...] = (pruners, refiners or {})
    hooked = [(n, p) for group in groups for n, p in group.items() if p.needs_inputs]
    if not hooked:
        return

    def feeder(pruner: LayerPruner):
        return lambda module, args, output: pruner.add_batch(args[0].detach(), output.detach())

    handles = [block.linears[n].register_forward_hook(feeder(p)) for n, p in hooked]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()


def prune_layer(
    layer: nn.Linear, pruner: LayerPruner, sparsity: float, pattern: NMPattern | None, refiner: MaskRefiner | None
) -> None:
    """The pruner's mask, then (``--refine``) the refiner's change of it from the dense weights."""
    if refiner is None:
        pruner.prune(sparsity, pattern)
        pruner.free()
        return
    dense = layer.weight.detach().clone()
    refiner.refine(dense, pruner.prune(sparsity, pattern), pattern)
    pruner.free()
    refiner.free()


def prune_block(
    block: Block,
    inputs: Sequence[BlockInput],
    make_pruner: PrunerFactory,
    sparsity: dict[str, float],
    pattern: NMPattern | None,
    comparison: Comparison,
    make_refiner: RefinerFactory | None = None,
) -> list[BlockInput]:
    """Prune every linear of one block at once (each refined by ``make_refiner``'s); return the block's outputs."""
    pruners = {n: make_pruner(lin, comparison) for n, lin in block.linears.items()}
    refiners = {n: make_refiner(lin, comparison) for n, lin in block.linears.items()} if make_refiner else {}
    collect_statistics(block, pruners, inputs, refiners)
    for name, pruner in pruners.items():
        prune_layer(block.linears[name], pruner, sparsity[name], pattern, refiners.get(name))
    return run_block(block, inputs)


def prune_sequential(
    adapter: ModelAdapter,
    towers: Sequence[Tower],
    batch: Batch,
    sparsity: dict[str, float],
    make_pruner: PrunerFactory,
    *,
    pattern: NMPattern | None = None,
    comparison: Callable[[str], Comparison] = lambda tower: "row",
    micro_batch: int = 8,
    progress: ProgressFactory = no_progress,
    onloader: Onloader | None = None,
    make_refiner: RefinerFactory | None = None,
) -> LayerSparsity:
    """Prune tower by tower, block by block, replaying inputs through the already-pruned blocks (with an
    ``onloader``, each block sits on the execution device only from its statistics to its pruned outputs)."""
    bar = progress(total=sum(len(t.blocks) for t in towers), desc="pruning blocks")
    measured = LayerSparsity()
    with torch.no_grad():
        for tower in towers:
            inputs = [capture_inputs(adapter, tower.blocks[0], m) for m in split_batch(batch, micro_batch)]
            for block in tower.blocks:
                with onloader.held(block.module) if onloader else contextlib.nullcontext():
                    groups = comparison(tower.name)
                    inputs = prune_block(block, inputs, make_pruner, sparsity, pattern, groups, make_refiner)
                    for name, layer in block.linears.items():  # measured while the block is in memory
                        measured.record(name, layer.weight)
                bar.update(1)
    bar.close()
    return measured
