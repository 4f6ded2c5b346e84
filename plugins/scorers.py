"""Built-in coarse-step scorers: zeroth-order (forward passes only) and first-order (gradients)."""

from __future__ import annotations

from ecoflap.core.adapters import Batch, ModelAdapter, Tower
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.scoring import Scorer, first_order_scores, zeroth_order_scores, zeroth_order_variant
from ecoflap.plugins.outlier_allocators import WandaMetricScorer


def group_size(adapter: ModelAdapter, asked: int, micro_batch: int) -> int:
    """Samples that must share one perturbation (or one backward pass). A contrastive loss couples
    the samples of a batch (each is the others' negative), so they go together: the micro-batch."""
    return micro_batch if adapter.couples_samples else asked


class ZerothOrderScorer(Scorer):
    """MEZO-GradOnly: |L(W + eps z) - L(W - eps z)| / (2 eps), summed, one scalar per tensor
    (variants grad-mag-abs and grad-mag-square weigh it by the tensor's magnitude)."""

    name = "zeroth-order"

    def score(
        self,
        adapter: ModelAdapter,
        towers: list[Tower],
        batch: Batch,
        progress: ProgressFactory = no_progress,
    ) -> dict[str, float]:
        o = self.options
        scalars = zeroth_order_scores(
            adapter,
            towers,
            batch,
            eps=o.get("eps", 1e-3),
            num_noise=o.get("num_noise", 1),
            seed=o.get("seed", 42),
            micro_batch=o.get("micro_batch", 4),
            group_size=group_size(adapter, o.get("group_size", 1), o.get("micro_batch", 4)),
            level=o.get("level", "tensor"),
            difference=o.get("difference", "central"),
            progress=progress,
        )
        return zeroth_order_variant(scalars, adapter, towers, o.get("variant", "grad-only"))


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
            variant=o.get("variant", "grad-mag-abs"),
            progress=progress,
        )


@hookimpl
def register_scorers(register) -> None:
    register(ZerothOrderScorer)
    register(FirstOrderScorer)
    register(WandaMetricScorer)  # the block statistics of --allocator owl and dlp
