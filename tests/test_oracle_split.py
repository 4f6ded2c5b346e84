"""benchmarks/oracle_split.py: the splits it draws meet the budget, and its rows say which scorer they are."""

from __future__ import annotations

import oracle_split
import pytest

from ecoflap.core.config import PruneConfig

SIZES = {"vision": {"v.q": 100, "v.k": 100}, "language": {"l.q": 400, "l.k": 400}}


def test_the_language_sparsity_meets_the_budget_exactly() -> None:
    language = oracle_split.language_sparsity(0.4, 0.6, SIZES)
    assert language == pytest.approx(0.35)
    assert (0.6 * 200 + language * 800) / 1000 == pytest.approx(0.4)
    assert oracle_split.language_sparsity(0.1, 0.9, SIZES) is None  # the language tower would be denser than dense


def test_the_row_called_default_is_the_jobs_default_zeroth_order() -> None:
    """The figure marks one row as the default: its settings, spelled out, give the method identity that
    ``ecoflap run --scorer zeroth-order`` gives with nothing else set, and every other zeroth-order row differs."""
    default = PruneConfig.build(allocator="ecoflap", scorer="zeroth-order").method()
    named = {name: PruneConfig.build(**settings).method() for name, settings in oracle_split.SCORERS.items()}
    assert [name for name, method in named.items() if method == default] == [
        "ecoflap zeroth-order weight-scaled (default)"
    ]
    assert set(oracle_split.MARKERS) == set(oracle_split.SCORERS) | {"oracle"}
