"""Progress reporting: callers pass a factory shaped like ``tqdm(total=, desc=)``; tqdm draws the terminal's bars."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


class ProgressFactory(Protocol):
    def __call__(self, *, total: int, desc: str) -> ProgressBar: ...


class _NullBar:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def no_progress(*, total: int, desc: str) -> ProgressBar:
    """A progress factory that shows nothing."""
    return _NullBar()


class _Bars:
    """Several progress bars advanced together (the terminal's and the caller's, e.g. Prefect's log)."""

    def __init__(self, *bars: ProgressBar) -> None:
        self.bars = bars

    def update(self, n: int = 1) -> None:
        for bar in self.bars:
            bar.update(n)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def terminal_bars(inner: ProgressFactory) -> ProgressFactory:
    """A progress factory that also draws a tqdm bar with ETA on stderr (``TQDM_DISABLE=1`` hides it)."""

    def factory(*, total: int, desc: str) -> ProgressBar:
        from tqdm import tqdm  # imported when a bar is drawn: this module stays light

        return _Bars(tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True), inner(total=total, desc=desc))

    return factory
