"""Progress reporting without a dependency: callers pass a factory shaped like ``tqdm(total=, desc=)``."""

from __future__ import annotations

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
