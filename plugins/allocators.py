"""Built-in sparsity allocators: ``ecoflap`` (score-driven, capped), ``uniform``, ``from-file``, ``owl``, ``dlp``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ecoflap.core.allocation import (
    Allocation,
    AllocationRequest,
    Allocator,
    budgets,
    group_layers,
    group_scores,
    keep_counts,
    smooth_scores,
    validate_target,
)
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.outlier_allocators import DlpAllocator, OwlAllocator


class EcoflapAllocator(Allocator):
    """One global budget shared in proportion to group importance, no group above the cap."""

    name = "ecoflap"

    def allocate(self, request: AllocationRequest) -> Allocation:
        if request.scores is None:
            raise EcoflapError("the ecoflap allocator needs importance scores: choose a --scorer")
        missing = [la.name for la in request.layers if la.name not in request.scores]
        if missing:
            raise EcoflapError(f"no importance score for {len(missing)} layers, e.g. {missing[0]}")
        groups, sizes = group_layers(request)
        scores = group_scores(request, groups, sizes)
        scores = smooth_scores(request, groups, sizes, scores, int(self.options.get("smooth_blocks", 1)))
        keep: dict[str, int] = {}
        for members in budgets(request, groups):
            keep |= keep_counts(
                {g: scores[g] for g in members},
                {g: sizes[g] for g in members},
                request.target,
                request.cap,
            )
        sparsity = {la.name: 1.0 - keep[groups[la.name]] / sizes[groups[la.name]] for la in request.layers}
        return Allocation(sparsity, groups, keep, sizes, request.target, request.cap, self.name)


class UniformAllocator(Allocator):
    """Every layer gets the target sparsity."""

    name = "uniform"
    needs_scores = False

    def allocate(self, request: AllocationRequest) -> Allocation:
        validate_target(request.target)
        groups = {la.name: la.name for la in request.layers}
        sizes = {la.name: la.size for la in request.layers}
        keep = {la.name: la.size - math.floor(la.size * request.target) for la in request.layers}
        sparsity = {la.name: request.target for la in request.layers}
        return Allocation(sparsity, groups, keep, sizes, request.target, request.cap, self.name)


class FromFileAllocator(Allocator):
    """A sparsity dictionary from a JSON file: ``{layer: sparsity}`` or a saved allocation."""

    name = "from-file"
    needs_scores = False

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if not path:
            raise EcoflapError("the from-file allocator needs --allocation-file PATH (a JSON sparsity dictionary)")
        self.path = Path(path)
        self.table = _read_sparsity_file(self.path)  # read now: a bad file fails before any model loads

    def allocate(self, request: AllocationRequest) -> Allocation:
        table = self.table
        names = {la.name for la in request.layers}
        missing = sorted(names - table.keys())
        unknown = sorted(table.keys() - names)
        if missing or unknown:
            what = f"{len(missing)} layers missing (e.g. {missing[0]})" if missing else ""
            what += ("; " if missing and unknown else "") + (
                f"{len(unknown)} unknown layers (e.g. {unknown[0]})" if unknown else ""
            )
            raise EcoflapError(f"sparsity file {self.path} does not match the model: {what}")
        sparsity = {la.name: table[la.name] for la in request.layers}
        groups = {la.name: la.name for la in request.layers}
        sizes = {la.name: la.size for la in request.layers}
        keep = {la.name: la.size - math.floor(la.size * sparsity[la.name]) for la in request.layers}
        return Allocation(sparsity, groups, keep, sizes, request.target, request.cap, self.name)


def _read_sparsity_file(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EcoflapError(f"sparsity file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EcoflapError(f"sparsity file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("sparsity"), dict):
        data = data["sparsity"]
    numbers = isinstance(data, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    )
    if not numbers:
        raise EcoflapError(f"sparsity file {path} must map layer names to numbers")
    if not data:
        raise EcoflapError(f"sparsity file {path} holds no layers: give a sparsity per prunable layer")
    bad = [k for k, v in data.items() if not 0.0 <= v < 1.0]
    if bad:
        raise EcoflapError(f"sparsity file {path}: {bad[0]} = {data[bad[0]]} is outside [0, 1)")
    return {k: float(v) for k, v in data.items()}


@hookimpl
def register_allocators(register) -> None:
    register(EcoflapAllocator)
    register(UniformAllocator)
    register(FromFileAllocator)
    register(OwlAllocator)
    register(DlpAllocator)
