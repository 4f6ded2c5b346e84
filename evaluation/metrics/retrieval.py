"""Image-text retrieval recall at K (LAVIS's ``report_metrics`` for COCO / Flickr30k retrieval).

TR@K: the share of images whose best-ranked matching caption is among the top K captions.
IR@K: the share of captions whose best-ranked matching image is among the top K images.
Ranks come from a stable descending sort (ties: the lower index first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KS = (1, 5, 10)


def best_ranks(scores: torch.Tensor, matches: Sequence[Sequence[int]]) -> list[int]:
    """For each row, the 0-based rank of its best-placed matching column."""
    if scores.shape[0] != len(matches):
        raise ValueError(f"{scores.shape[0]} rows of scores but {len(matches)} lists of matches")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
    ranks = []
    for row, wanted in enumerate(matches):
        if not wanted:
            raise ValueError(f"row {row} has no matching column")
        ranks.append(int(position[row, list(wanted)].min()))
    return ranks


def recall_at_k(ranks: Sequence[int], k: int) -> float:
    return sum(rank < k for rank in ranks) / len(ranks)


def retrieval_metrics(
    similarity: torch.Tensor, image_texts: Sequence[Sequence[int]], text_images: Sequence[Sequence[int]]
) -> dict[str, float]:
    """``tr_r1..tr_r10``, ``ir_r1..ir_r10``, their means and ``r_mean`` (in [0, 1]) from ``[images, texts]``."""
    tr = best_ranks(similarity, image_texts)
    ir = best_ranks(similarity.t(), text_images)
    metrics = {f"tr_r{k}": recall_at_k(tr, k) for k in KS} | {f"ir_r{k}": recall_at_k(ir, k) for k in KS}
    metrics["tr_mean"] = sum(metrics[f"tr_r{k}"] for k in KS) / len(KS)
    metrics["ir_mean"] = sum(metrics[f"ir_r{k}"] for k in KS) / len(KS)
    metrics["r_mean"] = (metrics["tr_mean"] + metrics["ir_mean"]) / 2
    return metrics


def hits(ranks: Sequence[int], k: int) -> list[float]:
    """1.0 where the rank is within the top k (for the stderr of R@K)."""
    return [float(rank < k) for rank in ranks]
