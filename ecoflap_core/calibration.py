"""Calibration data: seeded windows of ``nsamples x seqlen`` tokens from a token stream (as Wanda does)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from ecoflap.core.errors import EcoflapError


def token_windows(tokens: Sequence[int], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets: a ``[nsamples, seqlen]`` tensor."""
    if nsamples < 1 or seqlen < 2:
        raise EcoflapError(f"need at least 1 sample of at least 2 tokens (got {nsamples} x {seqlen})")
    if len(tokens) < nsamples * seqlen:
        raise EcoflapError(
            f"the corpus has {len(tokens)} tokens, too few for {nsamples} x {seqlen} calibration "
            f"tokens: use fewer --nsamples, a shorter --seqlen or a larger --corpus"
        )
    rng = random.Random(seed)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    starts = [rng.randint(0, len(tokens) - seqlen) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def choose_pairs(pairs: Sequence[Any], nsamples: int, seed: int) -> list[Any]:
    """``nsamples`` distinct (image, caption) pairs drawn with ``seed``."""
    if nsamples < 1:
        raise EcoflapError(f"need at least 1 calibration sample (got {nsamples})")
    if len(pairs) < nsamples:
        raise EcoflapError(f"only {len(pairs)} image-caption pairs, fewer than the {nsamples} calibration samples")
    return random.Random(seed).sample(list(pairs), nsamples)
