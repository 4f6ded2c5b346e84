"""Sparsity allocation: importance scores -> one sparsity per layer for one global target.

ECoFLaP's rule (ECOFLAP_SPEC.md section 2), in exact integer arithmetic: with N prunable weights,
target sparsity p and cap p_max, keep K = floor(N (1 - p)) weights in all. Each group starts at the
floor ceil(n_g (1 - p_max)) that enforces the cap; the rest, R, goes to groups in proportion to their
score S_g (largest remainders, so counts are exact); a group that fills up drops out and its overflow
is handed out again, until exactly K weights are kept. Without saturation this is the closed form
sparsity_g = p_max - (p_max - p) * rho_g / rho_bar, rho_g = S_g / n_g, rho_bar = sum S / N.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal

from ecoflap.core.errors import EcoflapError

Granularity = Literal["layer", "block", "tower"]
Aggregation = Literal["sum", "avg"]


@dataclass(frozen=True)
class LayerInfo:
    """A prunable layer as the allocator sees it."""

    name: str
    size: int
    block: str
    tower: str

    def group(self, granularity: Granularity) -> str:
        return {"layer": self.name, "block": self.block, "tower": self.tower}[granularity]


@dataclass
class AllocationRequest:
    layers: list[LayerInfo]
    target: float
    cap: float
    scores: dict[str, float] | None = None
    granularity: Granularity = "block"
    aggregation: Aggregation = "sum"
    per_tower: bool = False


@dataclass
class Allocation:
    """A sparsity per layer, and the exact kept counts per group it came from."""

    sparsity: dict[str, float]
    groups: dict[str, str] = field(default_factory=dict)
    keep: dict[str, int] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    target: float | None = None
    cap: float | None = None
    method: str = ""

    def kept(self) -> int:
        return sum(self.keep.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


class Allocator(ABC):
    """Turns per-layer scores (or nothing) into an :class:`Allocation`."""

    name: ClassVar[str]
    needs_scores: ClassVar[bool] = True
    #: the scorer whose statistics this allocator reads, whatever --scorer says (None: the --scorer)
    scorer: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def allocate(self, request: AllocationRequest) -> Allocation:
        """One sparsity per layer of ``request.layers``."""


def _exact(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def validate_target(target: float, cap: float | None = None) -> None:
    """Sparsity in [0, 1) and a cap in [target, 1]."""
    if not 0.0 <= target < 1.0:
        raise EcoflapError(f"sparsity {target} is out of range: use a value in [0, 1), e.g. 0.5")
    if cap is not None and not target <= cap <= 1.0:
        raise EcoflapError(
            f"max sparsity {cap} must lie in [sparsity, 1] = [{target}, 1]: "
            f"the paper uses sparsity + 0.1 (here {min(target + 0.1, 1.0):.2f})"
        )


def keep_counts(scores: Mapping[str, float], sizes: Mapping[str, int], target: float, cap: float) -> dict[str, int]:
    """Exact kept-weight counts per group: they sum to floor(N (1 - target)), none below the cap."""
    validate_target(target, cap)
    if any(s < 0 or not math.isfinite(s) for s in scores.values()):
        raise EcoflapError("importance scores must be finite and non-negative")
    total = sum(sizes.values())
    budget = math.floor(total * (1 - _exact(target)))
    keep = {g: math.ceil(n * (1 - _exact(cap))) for g, n in sizes.items()}
    _trim_to_budget(keep, sizes, cap, budget)
    while (rest := budget - sum(keep.values())) > 0:
        active = [g for g in keep if keep[g] < sizes[g]]
        weights = {g: float(scores[g]) for g in active}
        if sum(weights.values()) <= 0:  # only zero scores left: spread over the remaining room
            weights = {g: float(sizes[g] - keep[g]) for g in active}
        for g, extra in _largest_remainder(rest, weights).items():
            keep[g] = min(sizes[g], keep[g] + extra)
    return keep


def shifted_keep_counts(
    density: Mapping[str, float], sizes: Mapping[str, int], target: float, cap: float
) -> dict[str, int]:
    """Exact kept counts near n_g * clip(d_g + c, 1 - cap, 1), with the one shift c that makes them sum to
    floor(N (1 - target)): densities from a rule that fixes their differences, not their level (OWL, DLP)."""
    validate_target(target, cap)
    if any(not math.isfinite(d) for d in density.values()):
        raise EcoflapError("layer densities must be finite")
    budget = math.floor(sum(sizes.values()) * (1 - _exact(target)))
    low = {g: math.ceil(n * (1 - _exact(cap))) for g, n in sizes.items()}
    _trim_to_budget(low, sizes, cap, budget)
    quotas = _shifted_quotas(density, sizes, low, budget)
    return _round_to_budget(quotas, low, sizes, budget)


def _shifted_quotas(
    density: Mapping[str, float], sizes: Mapping[str, int], low: Mapping[str, int], budget: int
) -> dict[str, float]:
    """clip(n_g (d_g + c), low_g, n_g) with c found by bisection (the sum grows with c)."""

    def quotas(shift: float) -> dict[str, float]:
        return {g: min(max(n * (density[g] + shift), low[g]), n) for g, n in sizes.items()}

    below = min(low[g] / n - density[g] for g, n in sizes.items()) - 1.0
    above = max((1.0 - d for d in density.values()), default=0.0) + 1.0
    for _ in range(200):
        middle = (below + above) / 2
        below, above = (middle, above) if sum(quotas(middle).values()) < budget else (below, middle)
    return quotas(above)


def _round_to_budget(
    quotas: Mapping[str, float], low: Mapping[str, int], sizes: Mapping[str, int], budget: int
) -> dict[str, int]:
    """Integers within [low_g, n_g] that sum to ``budget``: floors, then +1 by largest remainder (or -1 by
    smallest, if rounding in the quotas overshot)."""
    keep = {g: min(max(math.floor(q), low[g]), sizes[g]) for g, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda g: (keep[g] - quotas[g], g))
    while (rest := budget - sum(keep.values())) != 0:
        order = by_remainder if rest > 0 else by_remainder[::-1]
        room = [g for g in order if (keep[g] < sizes[g] if rest > 0 else keep[g] > low[g])]
        if not room:  # cannot happen: sum(low) <= budget <= N
            raise AssertionError(f"no room for {rest} kept weights")
        for g in room[: abs(rest)]:
            keep[g] += 1 if rest > 0 else -1
    return keep


def _trim_to_budget(keep: dict[str, int], sizes: Mapping[str, int], cap: float, budget: int) -> None:
    """When cap == target, rounding the floors up can exceed the budget by < 1 weight per group."""
    excess = sum(keep.values()) - budget
    rounded_up = [g for g in keep if keep[g] > sizes[g] * (1 - _exact(cap))]
    for g in rounded_up[: max(excess, 0)]:
        keep[g] -= 1


def _largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split the integer ``total`` in proportion to ``weights``, exactly (Hamilton's method)."""
    norm = sum(weights.values())
    quotas = {g: total * w / norm for g, w in weights.items()}
    shares = {g: math.floor(q) for g, q in quotas.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(quotas, key=lambda g: (shares[g] - quotas[g], g))
    for g in by_remainder[:left]:
        shares[g] += 1
    return shares


def group_scores(request: AllocationRequest, groups: Mapping[str, str], sizes: Mapping[str, int]) -> dict[str, float]:
    """S_g: the sum of the layer scores of each group (``avg``: divided by n_g)."""
    assert request.scores is not None
    totals = dict.fromkeys(sizes, 0.0)
    for layer in request.layers:
        totals[groups[layer.name]] += float(request.scores[layer.name])
    if request.aggregation == "avg":
        totals = {g: s / sizes[g] for g, s in totals.items()}
    return totals


def smooth_window_problem(window: int) -> str | None:
    """What is wrong with a smoothing window, or None: it counts groups and is centred on one, so it is odd."""
    if window % 2 == 0 or window < 1:
        return f"score smoothing window {window} must be a positive odd number (1: none), e.g. 3"
    return None


def smooth_scores(
    request: AllocationRequest, groups: Mapping[str, str], sizes: Mapping[str, int], scores: Mapping[str, float],
    window: int,
) -> dict[str, float]:  # fmt: skip
    """Each group's score per weight replaced by its mean over ``window`` adjacent groups of the same tower, in
    the model's order (the window shrinks at a tower's ends); 1 leaves the scores as they are. A denoiser for
    an estimated score (zeroth-order: a few random directions per tensor), whose block-to-block noise
    otherwise becomes block-to-block sparsity; first-order's block densities vary smoothly with depth."""
    if problem := smooth_window_problem(window):
        raise EcoflapError(problem)
    if window == 1:
        return dict(scores)
    per_weight = request.aggregation == "sum"
    density = {g: scores[g] / sizes[g] if per_weight else scores[g] for g in scores}
    towers: dict[str, list[str]] = {}
    for layer in request.layers:
        members = towers.setdefault(layer.tower, [])
        if groups[layer.name] not in members:
            members.append(groups[layer.name])
    smoothed = {}
    for members in towers.values():
        for i, g in enumerate(members):
            near = members[max(0, i - window // 2) : i + window // 2 + 1]
            mean = sum(density[h] for h in near) / len(near)
            smoothed[g] = mean * sizes[g] if per_weight else mean
    return smoothed


def group_layers(request: AllocationRequest) -> tuple[dict[str, str], dict[str, int]]:
    """layer -> group id, and n_g for each group, at the request's granularity."""
    groups = {layer.name: layer.group(request.granularity) for layer in request.layers}
    sizes: dict[str, int] = {}
    for layer in request.layers:
        sizes[groups[layer.name]] = sizes.get(groups[layer.name], 0) + layer.size
    return groups, sizes


def budgets(request: AllocationRequest, groups: Mapping[str, str]) -> list[set[str]]:
    """The sets of groups that share one budget: all of them, or one set per tower."""
    if not request.per_tower:
        return [set(groups.values())]
    towers: dict[str, set[str]] = {}
    for layer in request.layers:
        towers.setdefault(layer.tower, set()).add(groups[layer.name])
    return list(towers.values())
