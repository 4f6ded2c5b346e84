"""Block-by-block onloading (``--offload cpu``): the blocks' weights stay on the CPU and each block moves to
the execution device only while it computes, then back; everything outside the blocks (embeddings, norms,
heads, projections) lives on the execution device.

A forward pass moves each block in and out as it runs (forward hooks), so capturing a tower's inputs or
scoring with forward passes needs nothing else; the fine step holds the block it prunes on the device
(:meth:`Onloader.held`) from its statistics to its pruned outputs, so that the pruners' statistics and
the pruned weights are computed there and copied back once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


class Onloader:
    """Keeps ``blocks`` on ``storage`` and moves each to ``device`` while it runs or is held."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], device: torch.device,
                 storage: torch.device | str = "cpu") -> None:  # fmt: skip
        self.device = torch.device(device)
        self.storage = torch.device(storage)
        self.blocks = list(blocks)
        self.held_blocks: set[int] = set()
        self.onloaded: set[int] = set()  # ids of the blocks on the device now
        self.moves = 0  # blocks moved to the device so far (for tests and progress)
        inside = {id(m) for block in self.blocks for m in block.modules()}
        for module in model.modules():
            if id(module) not in inside:
                _move_own_tensors(module, self.device)
        for block in self.blocks:
            block.to(self.storage)
            block.register_forward_pre_hook(self._before)
            block.register_forward_hook(self._after)

    def _before(self, block: nn.Module, args: Any) -> None:
        if "forward" not in vars(block):  # a forward replaced on the instance (zeroth-order's cached outputs of
            self.onload(block)  # the blocks before the perturbed one) computes nothing: no weights needed

    def _after(self, block: nn.Module, args: Any, output: Any) -> None:
        if id(block) not in self.held_blocks:
            self.offload(block)

    def onload(self, block: nn.Module) -> None:
        if id(block) not in self.onloaded:
            block.to(self.device)
            self.onloaded.add(id(block))
            self.moves += 1

    def offload(self, block: nn.Module) -> None:
        if id(block) in self.onloaded:
            block.to(self.storage)
            self.onloaded.discard(id(block))

    @contextlib.contextmanager
    def held(self, block: nn.Module) -> Iterator[None]:
        """``block`` stays on the device for the whole ``with`` (its statistics, pruning and outputs)."""
        self.onload(block)
        self.held_blocks.add(id(block))
        try:
            yield
        finally:
            self.held_blocks.discard(id(block))
            self.offload(block)


def _move_own_tensors(module: nn.Module, device: torch.device) -> None:
    """The module's own parameters and buffers (not its children's) moved to ``device`` in place."""
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None:
            module._buffers[name] = buffer.to(device)
