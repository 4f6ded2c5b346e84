"""Run configuration validation and seeded calibration windows."""

from __future__ import annotations

import pytest
import torch

from ecoflap.core.calibration import token_windows
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.pruning import NMPattern


def test_windows_are_seeded_slices_of_the_stream() -> None:
    tokens = list(range(1000))
    first = token_windows(tokens, 8, 16, seed=3)
    assert first.shape == (8, 16)
    assert torch.equal(first, token_windows(tokens, 8, 16, seed=3))
    assert not torch.equal(first, token_windows(tokens, 8, 16, seed=4))
    for row in first.tolist():  # each window is a contiguous run of the stream
        assert row == list(range(row[0], row[0] + 16))


@pytest.mark.parametrize(("n", "length", "message"), [(0, 16, "at least 1 sample"), (70, 16, "too few for 70 x 16")])
def test_bad_calibration_requests(n: int, length: int, message: str) -> None:
    with pytest.raises(EcoflapError, match=message):
        token_windows(list(range(1000)), n, length, seed=0)


def test_cap_defaults_to_target_plus_a_tenth_and_nm_fixes_the_target() -> None:
    assert PruneConfig.build(sparsity=0.6).cap == pytest.approx(0.7)
    assert PruneConfig.build(sparsity=0.95).cap == 1.0
    config = PruneConfig.build(nm="2:4", allocator="uniform")
    assert config.pattern == NMPattern(2, 4) and config.target == 0.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sparsity": 1.0}, "sparsity: Input should be less than 1"),
        ({"sparsity": 0.5, "max_sparsity": 0.4}, "max_sparsity 0.4 is below"),
        ({"nm": "8:4"}, "N:M pattern 8:4 is invalid"),
        ({"seqlen": "long"}, "seqlen: Input should be a valid integer"),
        ({"colour": 1}, "colour: unknown key"),
    ],
)
def test_config_errors_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(EcoflapError, match=message):
        PruneConfig.build(**values)
