"""Block-by-block onloading: the blocks' weights stay on the CPU (``--offload cpu``) or on disk (``--offload
disk``: read from the model's files, pruned blocks written to work files) and each block moves to the execution
device only while it computes, then back; everything outside the blocks (embeddings, norms, heads,
projections) lives on the execution device.

A forward pass moves each block in and out as it runs (forward hooks), so capturing a tower's inputs or
scoring with forward passes needs nothing else; the fine step holds the block it prunes on the device
(:meth:`Onloader.held`) from its statistics to its pruned outputs, so that the pruners' statistics and
the pruned weights are computed there and copied back once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

BlockState = dict[str, torch.Tensor]


class DiskBlocks:
    """The blocks' weights on disk: the model's own files until a block is pruned, then a work file of its own
    (torch's format, read back memory-mapped). ``original(i)`` reads block ``i``'s tensors (names relative to
    the block) from the model's files; the work files go when this object does."""

    def __init__(self, original: Callable[[int], BlockState], folder: Path | None = None) -> None:
        self.original = original
        self._work = None if folder else tempfile.TemporaryDirectory(prefix="ecoflap-blocks-")
        self.folder = Path(folder or self._work.name)

    def _path(self, index: int) -> Path:
        return self.folder / f"block-{index}.pt"

    def load(self, index: int) -> BlockState:
        path = self._path(index)
        if path.exists():
            return torch.load(path, mmap=True, weights_only=True)
        return self.original(index)

    def save(self, index: int, state: BlockState) -> None:
        partial = self._path(index).with_suffix(".partial")
        torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}, partial)
        partial.replace(self._path(index))


class Onloader:
    """Keeps ``blocks`` on ``storage`` (or, with ``disk``, nowhere in memory) and moves each to ``device``
    while it runs or is held; a held block is written back to ``disk`` when it is released (it was pruned)."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], device: torch.device,
                 storage: torch.device | str = "cpu", disk: DiskBlocks | None = None) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.disk = disk
        self.storage = torch.device("meta" if disk else storage)
        self.blocks = list(blocks)
        self.index = {id(block): i for i, block in enumerate(self.blocks)}
        self.held_blocks: set[int] = set()
        self.onloaded: set[int] = set()  # ids of the blocks on the device now
        self.moves = 0  # blocks moved to the device so far (for tests and progress)
        inside = {id(m) for block in self.blocks for m in block.modules()}
        for module in model.modules():
            if id(module) not in inside:
                _move_own_tensors(module, self.device)
        for block in self.blocks:
            self._store(block)
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
            if self.disk:
                state = self.disk.load(self.index[id(block)])
                block.load_state_dict({k: v.to(self.device, copy=True) for k, v in state.items()}, assign=True)
            block.to(self.device)
            self.onloaded.add(id(block))
            self.moves += 1

    def offload(self, block: nn.Module, changed: bool = False) -> None:
        if id(block) in self.onloaded:
            if self.disk and changed:
                self.disk.save(self.index[id(block)], block.state_dict())
            self._store(block)
            self.onloaded.discard(id(block))

    def _store(self, block: nn.Module) -> None:
        """The block back in storage: on the CPU; or, from disk, its parameters dropped (meta tensors) and its
        buffers on the CPU (the non-persistent ones, such as rotary tables, are in no file)."""
        if not self.disk:
            block.to(self.storage)
            return
        for module in block.modules():
            for name, param in module.named_parameters(recurse=False):
                module._parameters[name] = nn.Parameter(param.data.to("meta"), requires_grad=param.requires_grad)
            _move_own_buffers(module, torch.device("cpu"))

    def block_state(self, index: int) -> BlockState:
        """Block ``index``'s tensors as stored now (on disk, or in memory), for a checkpoint written block by block."""
        return self.disk.load(index) if self.disk else self.blocks[index].state_dict()

    @contextlib.contextmanager
    def held(self, block: nn.Module) -> Iterator[None]:
        """``block`` stays on the device for the whole ``with`` (its statistics, pruning and outputs)."""
        self.onload(block)
        self.held_blocks.add(id(block))
        try:
            yield
        finally:
            self.held_blocks.discard(id(block))
            self.offload(block, changed=True)


def _move_own_tensors(module: nn.Module, device: torch.device) -> None:
    """The module's own parameters and buffers (not its children's) moved to ``device`` in place."""
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    _move_own_buffers(module, device)


def _move_own_buffers(module: nn.Module, device: torch.device) -> None:
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None:
            module._buffers[name] = buffer.to(device)
