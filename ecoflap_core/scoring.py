"""COARSE step: one importance score per weight tensor (ECOFLAP_SPEC.md section 1).

Zeroth-order (forward passes only): for each scored tensor W and each perturbation group of
calibration samples, z ~ N(0, I) drawn in fp32 from a seed derived from (run seed, tensor, group,
noise index) and never stored beyond that step;  s_W += |L(W + eps z) - L(W - eps z)| / (2 eps).
The weights are never modified: the perturbed layer's output is computed as x W^T + eps x z^T by a
forward hook, so nothing needs restoring and restoring is exact. Two savings over the reference's
two full forward passes per tensor per batch: the outputs of every block are cached once per
micro-batch and the blocks before the perturbed one are replaced by their cached outputs (a
perturbation of block k leaves everything before block k unchanged), and the samples of a
micro-batch run together, each group with its own perturbation.

Two estimators of the derivative along z: ``central`` (the reference's), |L(W + eps z) - L(W - eps z)| / (2 eps),
two passes per unit; ``forward``, |L(W + eps z) - L(W)| / eps, one pass per unit and L(W) once per micro-batch
(from the cached block outputs: only the parts between and after the blocks run). Its bias is eps/2 z^T H z; at
``level="block"`` (one perturbation per block) it is the fastest.

The loss head (``head="linear"``): a causal LM's head (vocabulary projection and cross-entropy over every
token) costs SmolLM2 what six blocks cost, in every suffix pass. ``linear`` replaces the head's loss change by
its first-order expansion around W, g . (h' - h) with h the head's input at W and g = dL/dh (one backward
through the head per micro-batch): the blocks are still differenced forward only, and the error is
O(eps^2) relative for the central difference (the even orders cancel), O(eps) for the forward one; far below
float32's rounding of the two losses' difference, which it also avoids. Adapters opt in by splitting
their loss (``head_input`` / ``head_loss``).

``level="sampled"`` costs what ``block`` costs and estimates what ``tensor`` does: each perturbation group
perturbs ONE tensor of each block, tensor (group x noises + noise) mod (tensors in the block) in turn, and a
tensor's sum is scaled by (all draws) / (its draws); with fewer groups than a block has tensors, each group
runs ceil(tensors / groups) rounds (``num_noise`` at least that), so that every tensor is drawn. Over
exchangeable calibration samples its expectation is the per-tensor estimator's; a whole-block perturbation
instead measures ||g_block||, which weighs blocks whose gradient sits in one tensor above blocks where it is
spread (ell-2 against the per-tensor ell-1).

Variants of the zeroth-order score s_W (the reference's MEZO-*): grad-only s_W (the reference's scripts);
grad-mag-abs s_W * sum |W|; grad-mag-square s_W^2 * sum W^2 (the reference multiplies the scalar into |W|
element by element; the group score sums the elements, so the tensor's total is the same). Ours besides:
grad-mag-mean s_W * sum |W| / sqrt(n_W), first-order's sum |W| |g| as s_W can estimate it: s_W measures
E|g . z| = sqrt(2/pi) ||g||_2, and where g's elements are independent of W's, sum |W| |g| ~ sum |W| * ||g||_1 / n
with ||g||_1 ~ sqrt(2 n / pi) ||g||_2. grad-mag-abs thus grows by sqrt(n_W) against first-order's score: on
mini-blip2 the log of their ratio rises with log n_W at slope 0.50 over 282 tensors of 110k-885k weights.
weight-scaled drops that independence: s_W is measured along z * |W| / rms(W) (``weighted``), whose derivative
g . (|W| z) / rms(W) has E|.| = sqrt(2/pi) ||W g||_2 / rms(W), the ell-2 norm of first-order's element-wise
saliency |W g|; times ||W||_2 = sqrt(n) rms(W) it is sqrt(2/pi) sqrt(n) ||W g||_2 ~ sum |W g| where the
elements of W g are alike (ell-1 ~ sqrt(2 n / pi) ell-2 for Gaussian ones). Same passes, same cost.

First-order: I = |W| * mean_b |g_b| per element (GradMagAbs; GradOnly and GradMagSquare variants),
the tensor's score is the sum of I.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ecoflap.core.adapters import Batch, Block, ModelAdapter, Tower, batch_size, linears, split_batch
from ecoflap.core.errors import EcoflapError
from ecoflap.core.progress import ProgressFactory, no_progress

FirstOrderVariant = Literal["grad-mag-abs", "grad-only", "grad-mag-square"]
ZerothOrderVariant = Literal["grad-only", "grad-mag-abs", "grad-mag-square", "grad-mag-mean", "weight-scaled"]


class Scorer(ABC):
    """Scores every prunable tensor of a model from calibration data."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def score(
        self,
        adapter: ModelAdapter,
        towers: list[Tower],
        batch: Batch,
        progress: ProgressFactory = no_progress,
    ) -> dict[str, float]:
        """Layer name -> importance score (higher = more important)."""


def perturbation_seed(seed: int, layer: int, group: int, noise: int) -> int:
    """A 63-bit seed for one perturbation, independent of the order in which they are drawn."""
    digest = hashlib.blake2b(f"{seed}/{layer}/{group}/{noise}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def perturbation(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """z ~ N(0, I) shaped like ``weight``, fp32, regenerated from ``seed`` on the CPU (and left there when the
    weight is onloaded only when its block runs: the forward hook moves z to the layer's inputs)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(weight.shape, generator=gen, dtype=torch.float32)
    return z if weight.device.type == "meta" else z.to(weight.device)


def weight_profile(weight: torch.Tensor) -> torch.Tensor:
    """|W| / rms(W), fp32 on the weight's device: what :func:`weight_scaled` multiplies z by."""
    w = weight.detach().float().abs()
    return w / w.pow(2).mean().sqrt()


def weight_scaled(z: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """z * |W| / rms(W) (``profile`` from :func:`weight_profile`): a perturbation of each weight in proportion to
    its magnitude, of the same mean square as z's (so one eps serves both). Its directional derivative
    g . (|W| z) / rms(W) has E|.| = sqrt(2/pi) ||W * g||_2 / rms(W): the element-wise saliency |W g| of
    first-order's score, in ell-2. z (drawn on the CPU) goes to the weight's device, not W to z's."""
    return z.to(profile.device) * profile


def ordered_blocks(towers: Sequence[Tower]) -> list[Block]:
    return [b for t in towers for b in t.blocks]


def ordered_layers(towers: Sequence[Tower]) -> list[str]:
    return list(linears(towers))


# ---------------------------------------------------------------------------------------------
# zeroth order
# ---------------------------------------------------------------------------------------------


def capture_block_outputs(adapter: ModelAdapter, blocks: Sequence[Block], batch: Batch) -> list[Any]:
    """One plain forward pass; returns what each block returned, in block order."""
    outputs: list[Any] = [None] * len(blocks)

    def keeper(i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs[i] = output

        return hook

    handles = [b.module.register_forward_hook(keeper(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            adapter.forward(batch)
    finally:
        for h in handles:
            h.remove()
    return outputs


@contextlib.contextmanager
def replayed(blocks: Sequence[Block], outputs: Sequence[Any]) -> Iterator[None]:
    """Blocks that return their cached outputs instead of computing them."""
    for block, output in zip(blocks, outputs, strict=True):
        block.module.forward = lambda *a, _out=output, **k: _out  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.module.forward


@contextlib.contextmanager
def perturbed(
    layers: dict[nn.Linear, list[torch.Tensor | None]], scale: float, group_size: int, weighted: bool = False
) -> Iterator[None]:
    """Each layer's output becomes x (W + scale z_g)^T for the samples of group g (z_g None: x W^T); ``weighted``:
    z_g scaled element by element by |W| / rms(W) (:func:`weight_scaled`), from the weight as the layer runs it."""

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        zs = layers[module]
        if weighted:  # the profile once per pass, shared by the groups that perturb this layer
            profile = weight_profile(module.weight)
            zs = [None if z is None else weight_scaled(z, profile) for z in zs]
        samples = len(zs) * group_size  # OPT flattens [B, T, d] to [B * T, d] before its MLP
        x = args[0].reshape(samples, -1, args[0].shape[-1])
        out = output.view(samples, -1, output.shape[-1])
        for g, z in enumerate(zs):
            if z is None:
                continue
            rows = slice(g * group_size, (g + 1) * group_size)
            dtype = torch.promote_types(x.dtype, z.dtype)  # fp32 at least: eps z is 1-2 ulp in bf16
            out[rows] += (scale * (x[rows].to(dtype) @ z.to(x.device, dtype).T)).to(out.dtype)
        return output

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class LossProbe:
    """L per sample, as the difference needs it: the full loss (``head="full"``), or its change from L(W) through
    the linearized head, g . (h' - h) (``head="linear"``); ``base`` is what a forward difference subtracts."""

    def __init__(self, adapter: ModelAdapter, head: Literal["full", "linear"]) -> None:
        if head == "linear" and not adapter.splits_loss():
            raise adapter.unsplit_loss()  # before any pass
        self.adapter, self.head = adapter, head
        self.hidden: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    def prepare(
        self, blocks: Sequence[Block], outputs: Sequence[Any], batch: Batch, forward: bool
    ) -> torch.Tensor | None:
        """At W with every block replayed (the perturbed passes' path): for the linear head h and g; returns
        what a forward difference subtracts (None for the central one)."""
        if self.head == "linear":
            with torch.no_grad(), replayed(blocks, outputs):
                hidden = self.adapter.head_input(batch)
            leaf = hidden.detach().requires_grad_()
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self.adapter.head_loss(leaf, batch).double().sum(), leaf)
            self.hidden, self.grad = hidden.double(), grad.double()
        if not forward:
            return None
        if self.head == "linear":
            return torch.zeros(batch_size(batch), dtype=torch.float64)
        return unperturbed_loss(self.adapter, blocks, outputs, batch)

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.head == "full":
            return self.adapter.loss(batch).double()
        assert self.hidden is not None and self.grad is not None, "prepare() first"
        change = (self.adapter.head_input(batch).double() - self.hidden) * self.grad
        return change.flatten(1).sum(dim=1)


def _directional_derivative(
    probe: LossProbe,
    batch: Batch,
    layers: dict[nn.Linear, list[torch.Tensor | None]],
    group_size: int,
    eps: float,
    base: torch.Tensor | None,
    weighted: bool = False,
) -> torch.Tensor:
    """|dL/dW . z| per perturbation group (a group's loss: its samples' mean): the central difference
    (L(W + eps z) - L(W - eps z)) / (2 eps), or with ``base`` = L(W) the forward one (L(W + eps z) - L(W)) / eps."""
    with perturbed(layers, eps, group_size, weighted):
        plus = probe(batch)
    if base is None:
        with perturbed(layers, -eps, group_size, weighted):
            minus = probe(batch)
        change, step = plus - minus, 2 * eps
    else:
        change, step = plus - base, eps
    groups = plus.numel() // group_size
    return change.view(groups, group_size).mean(dim=1).abs() / step


def zeroth_order_scores(
    adapter: ModelAdapter,
    towers: Sequence[Tower],
    batch: Batch,
    *,
    eps: float = 1e-3,
    num_noise: int = 1,
    seed: int = 42,
    micro_batch: int = 4,
    group_size: int = 1,
    level: Literal["tensor", "block", "sampled"] = "tensor",
    difference: Literal["central", "forward"] = "central",
    head: Literal["full", "linear"] = "full",
    weighted: bool = False,
    progress: ProgressFactory = no_progress,
) -> dict[str, float]:
    """MEZO-GradOnly scores: one scalar per tensor (``level="block"``: per block, shared by size;
    ``"sampled"``: one tensor per block and group, see the module's text); ``weighted``: along weight-scaled
    perturbations (:func:`weight_scaled`)."""
    _check_zo(batch, micro_batch, group_size, eps, num_noise)
    blocks = ordered_blocks(towers)
    index = {name: i for i, name in enumerate(ordered_layers(towers))}
    scores = dict.fromkeys(index, 0.0)
    draws = dict.fromkeys(index, 0)
    units = _perturbation_units(blocks, level)
    probe = LossProbe(adapter, head)
    if level == "sampled":  # every tensor of a block drawn at least once: more rounds when samples are few
        num_noise = max(num_noise, -(-max(len(names) for _, names in units) // (batch_size(batch) // group_size)))
    micros = split_batch(batch, micro_batch)
    bar = progress(total=len(micros) * len(units), desc="zeroth-order scores")
    for start, micro in zip(range(0, batch_size(batch), micro_batch), micros, strict=True):
        outputs = capture_block_outputs(adapter, blocks, micro)
        base = probe.prepare(blocks, outputs, micro, forward=difference == "forward")
        first_group = start // group_size
        groups = range(first_group, first_group + batch_size(micro) // group_size)
        for k, names in units:
            with torch.no_grad(), replayed(blocks[:k], outputs[:k]):
                for noise in range(num_noise):
                    chosen = _chosen(names, groups, num_noise, noise, level)
                    zs = _draw(blocks[k], chosen, index, seed, groups, noise)
                    derivative = _directional_derivative(probe, micro, zs, group_size, eps, base, weighted)
                    if level == "sampled":
                        for (name,), value in zip(chosen, derivative.tolist(), strict=True):
                            scores[name] += value
                            draws[name] += 1
                    else:
                        _accumulate(scores, blocks[k], names, float(derivative.sum()))
            bar.update(1)
    bar.close()
    if level == "sampled":
        total = (batch_size(batch) // group_size) * num_noise
        return {n: scores[n] * total / draws[n] if draws[n] else 0.0 for n in scores}
    return scores


def _chosen(names: list[str], groups: range, num_noise: int, noise: int, level: str) -> list[list[str]]:
    """The layers each perturbation group perturbs in this unit (``sampled``: one, in turn)."""
    if level != "sampled":
        return [names for _ in groups]
    return [[names[(g * num_noise + noise) % len(names)]] for g in groups]


def unperturbed_loss(
    adapter: ModelAdapter, blocks: Sequence[Block], outputs: Sequence[Any], batch: Batch
) -> torch.Tensor:
    """L(W) per sample with every block replayed from ``outputs`` (the same path as the perturbed passes)."""
    with torch.no_grad(), replayed(blocks, outputs):
        return adapter.loss(batch).double()


def zeroth_order_variant(
    scores: dict[str, float], adapter: ModelAdapter, towers: Sequence[Tower], variant: ZerothOrderVariant
) -> dict[str, float]:
    """The scalars s_W of :func:`zeroth_order_scores` as the ``variant`` score of each tensor (``weight-scaled``:
    scalars measured along weight-scaled perturbations, :func:`zeroth_order_scores`' ``weighted``)."""
    if variant == "grad-only":
        return dict(scores)
    power = 2 if variant == "grad-mag-square" else 1
    totals = {}
    for name, layer in linears(towers).items():
        weight = layer.weight
        if weight.is_meta:  # a block kept on disk (--offload disk): read the tensor from the files
            if adapter.stored_tensor is None:
                raise EcoflapError(f"{name} is on the meta device and the model has no reader of its stored weights")
            weight = adapter.stored_tensor(f"{name}.weight")
        totals[name] = scores[name] ** power * _magnitude(weight.detach().float(), variant)
    return totals


def _magnitude(w: torch.Tensor, variant: ZerothOrderVariant) -> float:
    """What a variant multiplies s_W (s_W^2 for grad-mag-square) by."""
    if variant == "grad-mag-square":
        return float(w.pow(2).sum())
    if variant == "weight-scaled":  # sqrt(n) rms(W): s_W = sqrt(2/pi) ||W g||_2 / rms(W), times it ~ sum |W g|
        return float(w.pow(2).sum().sqrt())
    total = float(w.abs().sum())
    if variant == "grad-mag-mean":  # first-order's sum |W| |g| as s_W estimates it (the module's text)
        return total / math.sqrt(w.numel())
    return total


def _check_zo(batch: Batch, micro_batch: int, group_size: int, eps: float, num_noise: int) -> None:
    if micro_batch < 1 or group_size < 1 or micro_batch % group_size:
        raise EcoflapError(
            f"zeroth-order micro-batch ({micro_batch}) must be a positive multiple of the samples "
            f"per perturbation ({group_size})"
        )
    if batch_size(batch) % group_size:
        raise EcoflapError(f"{batch_size(batch)} samples do not split into groups of {group_size}")
    if eps <= 0 or num_noise < 1:
        raise EcoflapError("zeroth-order eps must be > 0 and num_noise >= 1")


def _perturbation_units(blocks: Sequence[Block], level: str) -> list[tuple[int, list[str]]]:
    """(block index, the layers perturbed together): one layer at a time, or a whole block (``sampled``:
    the block's layers, of which each group perturbs one)."""
    if level in ("block", "sampled"):
        return [(k, list(b.linears)) for k, b in enumerate(blocks) if b.linears]
    return [(k, [n]) for k, b in enumerate(blocks) for n in b.linears]


def _draw(
    block: Block,
    chosen: list[list[str]],
    index: dict[str, int],
    seed: int,
    groups: range,
    noise: int,
) -> dict[nn.Linear, list[torch.Tensor | None]]:
    """z for each perturbed layer and each perturbation group of the micro-batch (None: not perturbed there)."""
    layers = {n for names in chosen for n in names}
    return {
        block.linears[n]: [
            perturbation(block.linears[n].weight, perturbation_seed(seed, index[n], g, noise)) if n in names else None
            for g, names in zip(groups, chosen, strict=True)
        ]
        for n in sorted(layers, key=index.__getitem__)
    }


def _accumulate(scores: dict[str, float], block: Block, names: list[str], value: float) -> None:
    """Add a unit's estimate; a block-level estimate is shared among its layers by size."""
    sizes = {n: block.linears[n].weight.numel() for n in names}
    total = sum(sizes.values())
    for n in names:
        scores[n] += value * sizes[n] / total


# ---------------------------------------------------------------------------------------------
# first order
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def only_requires_grad(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` alone (saves the memory of every other gradient)."""
    before = {p: p.requires_grad for p in model.parameters()}
    wanted = set(params)
    for p in model.parameters():
        p.requires_grad_(p in wanted)
    try:
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


def visit_gradients(
    adapter: ModelAdapter,
    towers: Sequence[Tower],
    batch: Batch,
    visit: Callable[[str, torch.Tensor, torch.Tensor], None],
    *,
    micro_batch: int = 1,
    progress: ProgressFactory = no_progress,
    desc: str = "first-order scores",
) -> int:
    """Backpropagate each micro-batch's loss and hand every prunable tensor's gradient to ``visit(name, weight,
    grad)`` as soon as it is accumulated, then drop it (gradients for the prunable weights alone, and of those
    only the ones not yet visited are held). Returns the number of micro-batches."""
    layers = linears(towers)
    micros = split_batch(batch, micro_batch)
    bar = progress(total=len(micros), desc=desc)

    def hook(name: str, weight: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def on_grad(param: torch.Tensor) -> None:
            visit(name, weight, param.grad.detach())
            param.grad = None

        return on_grad

    # frozen models (mini-blip2, BLIP-2) turn gradients on only here, before the hooks that need them
    with only_requires_grad(adapter.model, [lin.weight for lin in layers.values()]):
        handles = [lin.weight.register_post_accumulate_grad_hook(hook(n, lin.weight)) for n, lin in layers.items()]
        try:
            for micro in micros:
                adapter.loss(micro).mean().backward()
                bar.update(1)
        finally:
            for h in handles:
                h.remove()
            bar.close()
    return len(micros)


def first_order_scores(
    adapter: ModelAdapter,
    towers: Sequence[Tower],
    batch: Batch,
    *,
    micro_batch: int = 1,
    variant: FirstOrderVariant = "grad-mag-abs",
    progress: ProgressFactory = no_progress,
) -> dict[str, float]:
    """Sum over each tensor of I = |W| mean|g| (or mean|g|, or W^2 mean g^2)."""
    layers = linears(towers)
    acc = {n: torch.zeros_like(lin.weight, dtype=torch.float32) for n, lin in layers.items()}
    power = 2 if variant == "grad-mag-square" else 1

    def accumulate(name: str, _weight: torch.Tensor, grad: torch.Tensor) -> None:
        acc[name].add_(grad.float().abs().pow(power))

    micros = visit_gradients(adapter, towers, batch, accumulate, micro_batch=micro_batch, progress=progress)
    return {n: _first_order_total(layers[n].weight, acc[n] / micros, variant) for n in layers}


def _first_order_total(weight: torch.Tensor, mean_grad: torch.Tensor, variant: str) -> float:
    w = weight.detach().float()
    if variant == "grad-only":
        return float(mean_grad.sum())
    if variant == "grad-mag-square":
        return float((w.pow(2) * mean_grad).sum())
    return float((w.abs() * mean_grad).sum())


# ---------------------------------------------------------------------------------------------
# the reference's way (oracle for tests and the benchmark)
# ---------------------------------------------------------------------------------------------


def zeroth_order_scores_naive(
    adapter: ModelAdapter,
    towers: Sequence[Tower],
    batch: Batch,
    *,
    eps: float = 1e-3,
    num_noise: int = 1,
    seed: int = 42,
    group_size: int = 1,
    difference: Literal["central", "forward"] = "central",
    weighted: bool = False,
    progress: ProgressFactory = no_progress,
) -> dict[str, float]:
    """The same estimator computed as the reference does: for each tensor and each group, the
    weight is perturbed in place (+eps z, then -eps z), two FULL forward passes, then restored by
    copy (``forward``: +eps z and the unperturbed model). Same seeds as :func:`zeroth_order_scores`,
    so the scores agree to rounding."""
    index = {name: i for i, name in enumerate(ordered_layers(towers))}
    layers = linears(towers)
    scores = dict.fromkeys(index, 0.0)
    groups = split_batch(batch, group_size)
    step = 2 * eps if difference == "central" else eps
    bar = progress(total=len(layers), desc="zeroth-order scores (reference way)")
    with torch.no_grad():
        for name, layer in layers.items():
            original = layer.weight.detach().clone()
            profile = weight_profile(original) if weighted else None
            for g, group in enumerate(groups):
                for noise in range(num_noise):
                    z = perturbation(layer.weight, perturbation_seed(seed, index[name], g, noise))
                    z = weight_scaled(z, profile).to(layer.weight.dtype) if profile is not None else z
                    layer.weight.add_(z, alpha=eps)
                    plus = adapter.loss(group).double().mean()
                    layer.weight.add_(z, alpha=-step)  # to W - eps z (central) or back to W (forward)
                    other = adapter.loss(group).double().mean()
                    layer.weight.copy_(original)
                    scores[name] += float((plus - other).abs()) / step
            bar.update(1)
    bar.close()
    return scores
