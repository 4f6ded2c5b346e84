"""Metrics of the evaluation tasks, each as its reference evaluator defines it."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return float(sum(values) / len(values)) if values else float("nan")


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean as lm-eval computes it (sample stddev with n - 1, over sqrt(n))."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
