"""Coarse-step scores against their definitions on tiny models."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from ecoflap.core.errors import EcoflapError
from ecoflap.core.scoring import (
    first_order_scores,
    ordered_blocks,
    zeroth_order_scores,
    zeroth_order_scores_naive,
)


@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize(("micro_batch", "group_size"), [(2, 1), (4, 1), (4, 2)])
def test_zeroth_order_equals_the_reference_way(make_adapter, toy_text, kind, micro_batch, group_size) -> None:
    """Prefix reuse + batched per-group perturbations give the reference's estimator exactly (fp64)."""
    adapter = make_adapter(kind, torch.float64)
    batch = adapter.calibration_batch([toy_text], 4, 24, seed=1)
    towers = adapter.towers()
    ours = zeroth_order_scores(adapter, towers, batch, micro_batch=micro_batch, group_size=group_size)
    reference = zeroth_order_scores_naive(adapter, towers, batch, group_size=group_size)
    assert ours.keys() == reference.keys()
    for name in ours:
        assert ours[name] == pytest.approx(reference[name], rel=1e-6), name


@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-opt"])
def test_forward_difference_equals_the_reference_way(make_adapter, toy_text, kind) -> None:
    """One perturbed pass per unit against L(W) from the replayed blocks = in-place W + eps z, two full passes."""
    adapter = make_adapter(kind, torch.float64)
    batch = adapter.calibration_batch([toy_text], 4, 24, seed=1)
    towers = adapter.towers()
    ours = zeroth_order_scores(adapter, towers, batch, micro_batch=2, difference="forward")
    reference = zeroth_order_scores_naive(adapter, towers, batch, difference="forward")
    central = zeroth_order_scores(adapter, towers, batch, micro_batch=2)
    for name in ours:
        assert ours[name] == pytest.approx(reference[name], rel=1e-6), name
    assert ours != central  # another estimator, not the central one renamed
    rho = spearmanr([ours[n] for n in ours], [central[n] for n in ours]).statistic
    assert rho > 0.9  # same seeds: the two differ by the eps/2 z^T H z bias only


def test_zeroth_order_ranks_tensors_like_the_true_gradient_norm(make_adapter, toy_text) -> None:
    """E|L(W+ez) - L(W-ez)| / 2e = sqrt(2/pi) ||grad||: Spearman >= 0.9 against per-sample gradient norms."""
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 4, 32, seed=0)
    towers = adapter.towers()
    zo = zeroth_order_scores(adapter, towers, batch, num_noise=8, micro_batch=4)
    layers = {n: lin for b in ordered_blocks(towers) for n, lin in b.linears.items()}
    true = dict.fromkeys(layers, 0.0)
    for i in range(4):
        adapter.model.zero_grad()
        adapter.loss({"input_ids": batch["input_ids"][i : i + 1]}).sum().backward()
        for name, lin in layers.items():
            true[name] += float(lin.weight.grad.norm())
    names = list(layers)
    rho = spearmanr([zo[n] for n in names], [true[n] for n in names]).statistic
    assert rho >= 0.9
    ratio = sum(zo.values()) / (8 * (2 / torch.pi) ** 0.5 * sum(true.values()))
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_zeroth_order_leaves_weights_untouched_and_is_seeded(make_adapter, toy_text) -> None:
    adapter = make_adapter("tiny-llama")
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    batch = adapter.calibration_batch([toy_text], 2, 16, seed=0)
    towers = adapter.towers()
    first = zeroth_order_scores(adapter, towers, batch, seed=3)
    again = zeroth_order_scores(adapter, towers, batch, seed=3)
    other = zeroth_order_scores(adapter, towers, batch, seed=4)
    assert first == again
    assert first != other
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(type(b.module).forward is b.module.forward.__func__ for b in ordered_blocks(towers))


def test_block_level_scores_share_the_block_estimate_by_size(make_adapter, toy_text) -> None:
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 2, 16, seed=0)
    towers = adapter.towers()
    scores = zeroth_order_scores(adapter, towers, batch, level="block")
    block = ordered_blocks(towers)[1]
    per_weight = {n: scores[n] / lin.weight.numel() for n, lin in block.linears.items()}
    assert max(per_weight.values()) == pytest.approx(min(per_weight.values()), rel=1e-9)


def test_first_order_matches_a_direct_computation(make_adapter, toy_text) -> None:
    adapter = make_adapter("tiny-opt", torch.float64)
    batch = adapter.calibration_batch([toy_text], 3, 16, seed=0)
    towers = adapter.towers()
    layers = {n: lin for b in ordered_blocks(towers) for n, lin in b.linears.items()}
    grads = {n: [] for n in layers}
    for i in range(3):
        adapter.model.zero_grad()
        adapter.loss({"input_ids": batch["input_ids"][i : i + 1]}).mean().backward()
        for n, lin in layers.items():
            grads[n].append(lin.weight.grad.detach().clone())
    adapter.model.zero_grad()
    for variant in ("grad-mag-abs", "grad-only", "grad-mag-square"):
        scores = first_order_scores(adapter, towers, batch, micro_batch=1, variant=variant)
        for n, lin in layers.items():
            g = torch.stack(grads[n])
            w = lin.weight.detach()
            expected = {
                "grad-mag-abs": (w.abs() * g.abs().mean(0)).sum(),
                "grad-only": g.abs().mean(0).sum(),
                "grad-mag-square": (w.pow(2) * g.pow(2).mean(0)).sum(),
            }[variant]
            assert scores[n] == pytest.approx(float(expected), rel=1e-5), (variant, n)
    assert all(p.grad is None for p in adapter.model.parameters())
    assert all(p.requires_grad for p in adapter.model.parameters())


def test_bad_zeroth_order_settings(make_adapter, toy_text) -> None:
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 3, 16, seed=0)
    with pytest.raises(EcoflapError, match="multiple"):
        zeroth_order_scores(adapter, adapter.towers(), batch, micro_batch=3, group_size=2)


@pytest.mark.parametrize("variant", ["grad-only", "grad-mag-abs", "grad-mag-square", "grad-mag-mean", "weight-scaled"])
def test_zeroth_order_variants_are_the_references_mezo_scores(make_adapter, toy_text, variant) -> None:
    """The reference's MEZO-* importance, element by element (|W| * s, W^2 * s^2, or the scalar s), summed per
    tensor as the group score sums it: what the scorer plugin returns for each --zo-variant."""
    from ecoflap.plugins.scorers import ZerothOrderScorer

    adapter = make_adapter("tiny-llama", torch.float64)
    batch = adapter.calibration_batch([toy_text], 4, 24, seed=1)
    towers = adapter.towers()
    scalars = zeroth_order_scores_naive(adapter, towers, batch, weighted=variant == "weight-scaled")
    exact = {"level": "tensor", "difference": "central"}  # the reference's estimator (the defaults are cheaper)
    ours = ZerothOrderScorer(variant=variant, micro_batch=4, **exact).score(adapter, towers, batch)
    for block in ordered_blocks(towers):
        for name, lin in block.linears.items():
            w, s = lin.weight.detach(), torch.tensor(scalars[name], dtype=torch.float64)
            element = {"grad-only": s, "grad-mag-abs": w.abs() * s, "grad-mag-square": w.pow(2) * s.pow(2),
                       "grad-mag-mean": w.abs() * s / w.numel() ** 0.5,
                       "weight-scaled": s * w.pow(2).sum().sqrt()}[variant]  # fmt: skip
            assert ours[name] == pytest.approx(float(element.sum()), rel=1e-6), name
    assert variant == "grad-only" or len({round(ours[n] / scalars[n], 6) for n in ours}) > 1  # not a constant factor


def test_zeroth_order_variant_is_in_the_method_identity_only_off_grad_only() -> None:
    from ecoflap.core.config import PruneConfig

    reference = PruneConfig(scorer="zeroth-order", zo_variant="grad-only").method()["scorer_options"]
    assert "zo_variant" not in reference  # the keys of runs recorded before the variant existed
    assert PruneConfig(scorer="zeroth-order", zo_variant="grad-mag-abs").method()["scorer_options"] == reference | {
        "zo_variant": "grad-mag-abs"
    }
    assert "zo_variant" not in PruneConfig(scorer="first-order", zo_variant="grad-mag-abs").method()["scorer_options"]
    default = PruneConfig(scorer="zeroth-order").method()["scorer_options"]  # the defaults chosen on validation
    assert default == {"zo_eps": 1e-3, "zo_noise": 1, "zo_group": 1, "zo_level": "sampled",
                       "zo_difference": "forward", "zo_variant": "weight-scaled"}  # fmt: skip


def test_later_zeroth_order_settings_are_keyed_only_off_the_value_before_them() -> None:
    from ecoflap.core.config import PruneConfig

    def options(**values: object) -> dict:
        return PruneConfig(scorer="zeroth-order", **values).method()["scorer_options"]

    before = options(zo_variant="grad-only", zo_difference="central")
    assert "zo_difference" not in before and "zo_variant" not in before
    assert options(zo_variant="grad-only", zo_difference="forward") == before | {"zo_difference": "forward"}
    assert options(zo_level="block") != options(zo_level="tensor")


def _one_draw(adapter, layer, batch, group: int, seed: int, index: int, eps: float, difference: str) -> float:
    """|dL/dW . z| of one group's sample, the weight perturbed in place (the reference's way)."""
    from ecoflap.core.scoring import perturbation, perturbation_seed

    sample = {k: v[group : group + 1] for k, v in batch.items()}
    z = perturbation(layer.weight, perturbation_seed(seed, index, group, 0))
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(z, alpha=eps)
        plus = adapter.loss(sample).double().mean()
        layer.weight.add_(z, alpha=-2 * eps if difference == "central" else -eps)
        other = adapter.loss(sample).double().mean()
        layer.weight.copy_(original)
    return float((plus - other).abs()) / (2 * eps if difference == "central" else eps)


@pytest.mark.parametrize("difference", ["central", "forward"])
def test_sampled_level_perturbs_one_tensor_per_block_and_group_in_turn(make_adapter, toy_text, difference) -> None:
    """Group g perturbs tensor g mod n of every block; a tensor's draws are summed and scaled to all groups."""
    from ecoflap.core.scoring import ordered_layers

    adapter = make_adapter("tiny-llama", torch.float64)
    towers = adapter.towers()
    blocks = ordered_blocks(towers)
    width = len(blocks[0].linears)
    nsamples = width + 2  # the first two tensors of a block are drawn twice, the others once
    batch = adapter.calibration_batch([toy_text], nsamples, 16, seed=2)
    ours = zeroth_order_scores(adapter, towers, batch, micro_batch=1, level="sampled", difference=difference, seed=5)
    index = {n: i for i, n in enumerate(ordered_layers(towers))}
    for block in blocks:
        names = list(block.linears)
        for t, name in enumerate(names):
            groups = [g for g in range(nsamples) if g % len(names) == t]
            values = [
                _one_draw(adapter, block.linears[name], batch, g, 5, index[name], 1e-3, difference) for g in groups
            ]
            assert ours[name] == pytest.approx(sum(values) * nsamples / len(groups), rel=1e-6), name


@pytest.mark.parametrize("level", ["tensor", "sampled"])
def test_weight_scaled_perturbation_is_z_times_abs_w_over_its_rms(make_adapter, toy_text, level) -> None:
    """weighted: each draw is |g . (z * |W| / rms(W))| with g the sample's true gradient (autograd), for the
    reference's in-place way and ours alike; a perturbation scaled by W's sign, unnormalised or not scaled at all
    gives another number (to the central difference's O(eps^2); LLaMA's softmax runs in fp32 even in an fp64
    model, so eps stays 1e-3)."""
    from ecoflap.core.scoring import ordered_layers, perturbation, perturbation_seed

    adapter = make_adapter("tiny-llama", torch.float64)
    towers = adapter.towers()
    batch = adapter.calibration_batch([toy_text], 2, 16, seed=3)
    ours = zeroth_order_scores(adapter, towers, batch, micro_batch=2, level=level, weighted=True, seed=7)
    assert zeroth_order_scores_naive(adapter, towers, batch, weighted=True, seed=7).keys() == ours.keys()
    index = {n: i for i, n in enumerate(ordered_layers(towers))}
    block = ordered_blocks(towers)[1]
    names = list(block.linears)
    for t, name in enumerate(names):
        weight = block.linears[name].weight
        total, draws = 0.0, 0
        for g in range(2):
            noises = range(4) if level == "sampled" else range(1)  # sampled: 4 rounds, tensor (g x 4 + n) mod 7
            for noise in noises:
                if level == "sampled" and (g * 4 + noise) % len(names) != t:
                    continue
                adapter.model.zero_grad()
                adapter.loss({k: v[g : g + 1] for k, v in batch.items()}).mean().backward()
                z = perturbation(weight, perturbation_seed(7, index[name], g, noise)).double()
                w = weight.detach().abs()
                total += float((weight.grad * z * w / w.pow(2).mean().sqrt()).sum().abs())
                draws += 1
        expected = total * (8 / draws if level == "sampled" else 1)
        assert ours[name] == pytest.approx(expected, rel=5e-3), name
    adapter.model.zero_grad()


def test_sampled_level_draws_every_tensor_when_samples_are_few(make_adapter, toy_text) -> None:
    """2 samples, 7 tensors per block: 4 rounds per sample, so no tensor is left unscored; = num_noise=4 asked."""
    adapter = make_adapter("tiny-llama")
    batch = adapter.calibration_batch([toy_text], 2, 16, seed=0)
    towers = adapter.towers()
    scores = zeroth_order_scores(adapter, towers, batch, micro_batch=2, level="sampled", difference="forward")
    assert all(v > 0 for v in scores.values())
    asked = zeroth_order_scores(
        adapter, towers, batch, micro_batch=2, level="sampled", difference="forward", num_noise=4
    )
    assert scores == asked


def test_linear_head_is_the_full_head_to_second_order(make_adapter, toy_text) -> None:
    """--zo-head linear: the head's loss change as g . (h' - h) gives the reference's central difference up to
    O(eps^2) relative, the forward one up to O(eps); a wrong g (sign, scale, rows) misses both. (One causal-LM
    adapter serves OPT and LLaMA; tiny-opt runs the check in a tenth of tiny-llama's time.)"""
    adapter = make_adapter("tiny-opt", torch.float64)
    batch = adapter.calibration_batch([toy_text], 4, 24, seed=1)
    towers = adapter.towers()
    exact = {"level": "tensor", "micro_batch": 2}
    for difference, tolerance in (("central", 1e-3), ("forward", 2e-2)):
        linear = zeroth_order_scores(adapter, towers, batch, **exact, difference=difference, head="linear")
        reference = zeroth_order_scores(adapter, towers, batch, **exact, difference=difference)  # = the naive way
        for name in linear:
            assert linear[name] == pytest.approx(reference[name], rel=tolerance), (difference, name)
    sampled = {"level": "sampled", "micro_batch": 2, "difference": "forward"}
    full = zeroth_order_scores(adapter, towers, batch, **sampled)
    linear = zeroth_order_scores(adapter, towers, batch, **sampled, head="linear")
    assert spearmanr([full[n] for n in full], [linear[n] for n in full]).statistic > 0.99  # random tiny weights


def test_linear_head_needs_a_split_loss_and_is_keyed(make_adapter, toy_text) -> None:
    from ecoflap.core import job
    from ecoflap.core.adapters import ModelAdapter
    from ecoflap.core.config import PruneConfig

    adapter = make_adapter("tiny-llama")

    class Unsplit(type(adapter)):  # an adapter that never split its loss at a head
        head_input = ModelAdapter.head_input
        head_loss = ModelAdapter.head_loss

    adapter.__class__ = Unsplit
    batch = adapter.calibration_batch([toy_text], 2, 16, seed=1)
    with pytest.raises(EcoflapError, match="not split at a head .*use --zo-head full"):
        zeroth_order_scores(adapter, adapter.towers(), batch, micro_batch=2, head="linear")
    with pytest.raises(EcoflapError, match=r"^--zo-head linear: tiny-llama's scoring loss has no separate head"):
        job.identify(adapter, PruneConfig(model="tiny-llama", zo_head="linear"))  # the job: before any compute
    options = PruneConfig(scorer="zeroth-order").method()["scorer_options"]
    assert "zo_head" not in options  # full: the key of every run recorded before the setting
    assert PruneConfig(scorer="zeroth-order", zo_head="linear").method()["scorer_options"] == options | {
        "zo_head": "linear"
    }
