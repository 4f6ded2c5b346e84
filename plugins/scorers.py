"""Built-in coarse-step scorers: zeroth-order (forward passes only) and first-order (gradients)."""

from __future__ import annotations

from ecoflap.core.adapters import Batch, ModelAdapter, Tower
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.provenance import SCORER_DEFAULTS
from ecoflap.core.scoring import Scorer, first_order_scores, zeroth_order_scores, zeroth_order_variant
from ecoflap.plugins.outlier_allocators import WandaMetricScorer


def group_size(adapter: ModelAdapter, asked: int, micro_batch: int) -> int:
    """Samples that must share one perturbation (or one backward pass). A contrastive loss couples
    the samples of a batch (each is the others' negative), so they go together: the micro-batch."""
    return micro_batch if adapter.couples_samples else asked


class ZerothOrderScorer(Scorer):
    """Per tensor: s = sum |dL/dW . z| from forward passes (default: one tensor of each block per sample in turn,
    forward difference), along weight-scaled perturbations z |W| / rms(W), times ||W||_2 (weight-scaled: first-order's
    element-wise saliency |W g|; grad-mag-abs is the reference's MEZO-GradMagAbs, grad-only its scripts')."""

    name = "zeroth-order"

    def score(
        self,
        adapter: ModelAdapter,
        towers: list[Tower],
        batch: Batch,
        progress: ProgressFactory = no_progress,
    ) -> dict[str, float]:
        o = self.options
        variant = o.get("variant", SCORER_DEFAULTS["zo_variant"])
        scalars = zeroth_order_scores(
            adapter,
            towers,
            batch,
            eps=o.get("eps", SCORER_DEFAULTS["zo_eps"]),
            num_noise=o.get("num_noise", SCORER_DEFAULTS["zo_noise"]),
            seed=o.get("seed", 42),
            micro_batch=o.get("micro_batch", 4),
            group_size=group_size(adapter, o.get("group_size", SCORER_DEFAULTS["zo_group"]), o.get("micro_batch", 4)),
            level=o.get("level", SCORER_DEFAULTS["zo_level"]),
            difference=o.get("difference", SCORER_DEFAULTS["zo_difference"]),
            head=o.get("head", SCORER_DEFAULTS["zo_head"]),
            weighted=variant == "weight-scaled",
            progress=progress,
        )
        return zeroth_order_variant(scalars, adapter, towers, variant)


class FirstOrderScorer(Scorer):
    """|W| * mean |g| summed per tensor (variants: grad-only, grad-mag-square)."""

    name = "first-order"

    def score(
        self,
        adapter: ModelAdapter,
        towers: list[Tower],
        batch: Batch,
        progress: ProgressFactory = no_progress,
    ) -> dict[str, float]:
        o = self.options
        return first_order_scores(
            adapter,
            towers,
            batch,
            micro_batch=group_size(adapter, o.get("fo_micro_batch", 1), o.get("micro_batch", 4)),
            variant=o.get("variant", SCORER_DEFAULTS["fo_variant"]),
            progress=progress,
        )


@hookimpl
def register_scorers(register) -> None:
    register(ZerothOrderScorer)
    register(FirstOrderScorer)
    register(WandaMetricScorer)  # the block statistics of --allocator owl and dlp
