"""Evaluation tasks as plugins (``register_tasks``): the capability each needs, its metrics, its result.

A task is a subclass of :class:`Task` registered by class. ``run`` gets a model adapter that has the
task's capability (see :mod:`ecoflap.core.capabilities`) and returns a :class:`TaskResult`; the
evaluation layer turns results into lm-eval's JSON shape and SQL rows. A model without the
capability is skipped with the reason from :meth:`Task.skip_reason`, never faked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ecoflap.core.capabilities import CAPABILITIES
from ecoflap.core.progress import ProgressFactory, no_progress


@dataclass(frozen=True)
class Metric:
    """One reported number: lm-eval writes it as ``"<name>,<filter>"`` with ``"<name>_stderr,<filter>"``."""

    name: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskOptions:
    """What ``ecoflap eval`` passes to every task."""

    data_dir: Path | None = None  # the task's standard-format files; None = the shipped default
    limit: int | None = None  # at most this many examples (smoke runs)
    seed: int = 1234
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific settings (--task-arg key=value)
    progress: ProgressFactory = no_progress


@dataclass
class TaskResult:
    """The metrics of one task on one model; ``stderr`` holds None where no stderr exists."""

    task: str
    version: str
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    n_samples: int
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. "SPICE unavailable: CoreNLP jars missing"


class Task(ABC):
    """An evaluation task; subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1.0"
    capability: ClassVar[str]  # a key of ecoflap.core.capabilities.CAPABILITIES
    metrics: ClassVar[tuple[Metric, ...]] = ()
    description: ClassVar[str] = ""

    @classmethod
    def skip_reason(cls, adapter: object) -> str | None:
        """Why ``adapter`` cannot do this task, or None when it can."""
        protocol = CAPABILITIES[cls.capability]
        if isinstance(adapter, protocol):
            return None
        return f"{getattr(adapter, 'model_id', type(adapter).__name__)} is not a {cls.capability} (task {cls.name})"

    @abstractmethod
    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        """Evaluate ``adapter`` and return its metrics."""
