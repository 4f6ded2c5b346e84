"""Model adapters: what the method needs to know about a model, for any ``nn.Module``.

An adapter names the model's towers (vision, language, ...) in forward order, each tower's block
sequence, and the prunable linears inside each block (filtered by ``targets`` / ``ignore`` regexes).
It runs a plain forward pass (to capture block inputs), a per-sample scoring loss, and saves the
model. Everything model-specific (transformers, LAVIS) lives in plugins; this module is torch only.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ecoflap.core.devices import inputs_follow_parameters
from ecoflap.core.errors import EcoflapError
from ecoflap.core.onload import BlockState, DiskBlocks, Onloader

Batch = dict[str, torch.Tensor]


@dataclass
class Block:
    """One transformer block: the unit of sequential replay and of ``block`` granularity."""

    name: str
    tower: str
    module: nn.Module
    linears: dict[str, nn.Linear]


@dataclass
class Tower:
    """A stack of blocks that one forward pass runs in order (a vision encoder, a language model)."""

    name: str
    blocks: list[Block]


@dataclass(frozen=True)
class LoadOptions:
    """What ``--model`` and friends ask of a loader."""

    source: str
    targets: Sequence[str] = ()
    ignore: Sequence[str] = ()
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A loadable model, registered by a plugin through ``register_models``."""

    name: str
    load: Callable[[LoadOptions], ModelAdapter]
    description: str = ""
    #: the adapter for local folders: ``matches(path)`` says whether it can load one
    matches: Callable[[Path], bool] | None = None


class ModelAdapter(ABC):
    """Describes one loaded model to the method."""

    kind: ClassVar[str] = "model"
    #: what ``calibration_batch`` takes: "text" (a list of documents) or "image-text" ((image, caption) pairs)
    calibration_data: ClassVar[str] = "text"
    #: True when a sample's loss depends on the other samples of its batch (contrastive losses):
    #: scorers then perturb / differentiate whole micro-batches together
    couples_samples: ClassVar[bool] = False
    #: a block's tensors read from the model's files by the block's name (names relative to the block), for
    #: ``--offload disk``; set by loaders that left the blocks' weights unread (LoadOptions.extra["offload"])
    block_weights: Callable[[str], BlockState] | None = None
    #: one tensor read from the model's files by its full name (the same loaders): the weights hash of a model
    #: whose blocks stayed on disk reads them one at a time
    stored_tensor: Callable[[str], torch.Tensor] | None = None

    def __init__(
        self,
        model: nn.Module,
        model_id: str,
        targets: Sequence[str] = (),
        ignore: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.targets = [re.compile(t) for t in targets]
        self.ignore = [re.compile(i) for i in ignore]
        self.device = torch.device("cpu")
        self.onloader: Onloader | None = None

    def place(self, device: torch.device, offload: str = "none") -> None:
        """Move the model to ``device``; ``offload="cpu"``: its blocks stay on the CPU, each onloaded while it runs.
        Off the CPU, every module moves its inputs to its own device, so adapters build batches on the CPU."""
        if offload in ("cpu", "disk"):
            blocks = [b for t in self.towers() for b in t.blocks]
            self.onloader = Onloader(self.model, [b.module for b in blocks], device, disk=self._disk(blocks, offload))
        else:
            self.model.to(device)
        if device.type != "cpu":
            inputs_follow_parameters(self.model)
        self.device = device

    def _disk(self, blocks: list[Block], offload: str) -> DiskBlocks | None:
        if offload != "disk":
            return None
        read = self.block_weights
        if read is None:
            raise EcoflapError(
                f"{self.model_id}: this model's loader cannot leave its blocks on disk "
                "(--offload disk reads Hugging Face causal-LM folders of safetensors): use --offload cpu"
            )
        return DiskBlocks(lambda index: read(blocks[index].name))

    # ---- structure ---------------------------------------------------------------------------
    @abstractmethod
    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        """``(tower name, block modules in forward order, dotted prefix of the blocks)``."""

    def towers(self) -> list[Tower]:
        """The towers with their blocks and their prunable linears (``targets`` / ``ignore`` applied)."""
        towers = []
        for tower_name, modules, prefix in self.tower_modules():
            blocks = [
                Block(f"{prefix}.{i}", tower_name, module, self._prunable(f"{prefix}.{i}", module))
                for i, module in enumerate(modules)
            ]
            towers.append(Tower(tower_name, blocks))
        if not any(b.linears for t in towers for b in t.blocks):
            raise EcoflapError(
                f"model {self.model_id!r} has no prunable linear layers (check --targets / --ignore patterns)"
            )
        return towers

    def _prunable(self, prefix: str, block: nn.Module) -> dict[str, nn.Linear]:
        found = {}
        for name, module in block.named_modules():
            full = f"{prefix}.{name}" if name else prefix
            if isinstance(module, nn.Linear) and self._selected(full):
                found[full] = module
        return found

    def _selected(self, name: str) -> bool:
        if self.targets and not any(t.search(name) for t in self.targets):
            return False
        return not any(i.search(name) for i in self.ignore)

    def prunable_layers(self) -> dict[str, nn.Linear]:
        return linears(self.towers())

    # ---- computation -------------------------------------------------------------------------
    @abstractmethod
    def forward(self, batch: Batch) -> Any:
        """A plain forward pass over ``batch`` (no loss needed); drives block-input capture."""

    @abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor:
        """The scoring loss, one value per sample: shape ``[batch size]``."""

    def splits_loss(self) -> bool:
        """Whether the adapter splits its loss at a head (what ``--zo-head linear`` needs)."""
        return type(self).head_input is not ModelAdapter.head_input

    def head_input(self, batch: Batch) -> torch.Tensor:
        """What the loss head reads (``[batch size, ...]``), where ``loss(b) == head_loss(head_input(b), b)``: an
        adapter that splits its loss so lets the zeroth-order scorer linearize the head (``--zo-head linear``)."""
        raise self.unsplit_loss()

    def head_loss(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The scoring loss from :meth:`head_input`'s output, one value per sample."""
        raise self.unsplit_loss()

    def unsplit_loss(self) -> EcoflapError:
        """The error of asking an adapter whose loss is not split for its head."""
        return EcoflapError(
            f"{self.model_id}: its scoring loss is not split at a head (head_input / head_loss): use --zo-head full"
        )

    # ---- data and persistence ----------------------------------------------------------------
    @abstractmethod
    def calibration_batch(self, texts: Sequence[Any], nsamples: int, seqlen: int, seed: int) -> Batch:
        """``nsamples`` seeded calibration samples as one batch, from data of kind ``calibration_data``."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Save the (pruned) model so that it reloads to the same outputs."""

    def describe(self) -> dict[str, Any]:
        towers = self.towers()
        return {
            "model": self.model_id,
            "adapter": type(self).__name__,
            "towers": {t.name: len(t.blocks) for t in towers},
            "prunable_layers": sum(len(b.linears) for t in towers for b in t.blocks),
            "prunable_parameters": sum(
                lin.weight.numel() for t in towers for b in t.blocks for lin in b.linears.values()
            ),
        }


def linears(towers: Sequence[Tower]) -> dict[str, nn.Linear]:
    """Every prunable linear of ``towers``, by name, in forward order."""
    return {n: lin for t in towers for b in t.blocks for n, lin in b.linears.items()}


def batch_size(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Consecutive micro-batches of at most ``size`` samples."""
    n = batch_size(batch)
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]
