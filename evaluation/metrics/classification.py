"""Top-k accuracy of logits (or similarities) against integer labels."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per example, 1.0 where the label is among the k highest scores (k capped at the class count)."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1).float()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: the share of examples whose label is in the top k."""
    return {f"top{k}": float(topk_correct(logits, labels, k).mean()) for k in ks}
