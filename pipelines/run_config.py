"""The validated configuration of ``ecoflap run``: one pruning run plus its evaluation, or a grid of them.

A run is a :class:`RunConfig` (a :class:`PruneConfig` with evaluation settings). A sweep is a base
run and a ``grid`` of values per key (models x pruners x scorers x allocators x sparsities x seeds);
every point of the grid is validated up front, so a bad value fails before any model is loaded.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ecoflap.core.config import MAX_EXAMPLES, MAX_SEED, PruneConfig, describe_validation_error
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import fingerprint
from ecoflap.core.record import evaluation_settings

DEFAULT_TASKS = ["auto"]
#: keys of a run file that describe a sweep rather than one run
SWEEP_KEYS = ("grid", "dense_baseline", "parallel", "deployment")


def default_run_name(config: Any) -> str:
    """``model_method_pruner_pattern``, plus what differs from the defaults (cap, granularity)."""
    method = config.allocator if config.allocator != "ecoflap" else f"ecoflap-{config.scorer}"
    pattern = config.nm.replace(":", "of") if config.nm else f"s{config.sparsity:g}"
    extra = f"_cap{config.max_sparsity:g}" if config.max_sparsity is not None else ""
    extra += f"_{config.granularity}" if config.granularity != "block" else ""
    return f"{Path(config.model).name}_{method}_{config.pruner}_{pattern}{extra}"


class RunConfig(PruneConfig):
    """What ``ecoflap run`` prunes and evaluates; unset keys are the ``ecoflap prune`` defaults."""

    tasks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS),
        description="evaluation task (repeatable); auto: the model's own measure (VQA or WikiText perplexity) [auto]",
    )
    limit: int | None = Field(300, ge=1, le=MAX_EXAMPLES, description="at most this many examples per task")
    eval_seed: int = Field(1234, ge=0, le=MAX_SEED, description="seed of the evaluation")
    task_args: dict[str, Any] = Field(default_factory=dict, description="task-specific settings")
    database_url: str | None = Field(None, description="results database [$ECOFLAP_DATABASE_URL, else SQLite]")
    output: str | None = Field(None, description="folder for results.json (and the pruned model) [runs/NAME]")
    dense: bool = Field(False, description="evaluate the model as loaded (the dense baseline)")
    save_model: bool = Field(False, description="copy the pruned model into the output folder (else a link)")
    overwrite: bool = Field(
        False, description="replace an output folder that is not an ecoflap run folder (its files are deleted)"
    )
    refresh: bool = Field(False, description="recompute every cached step")
    record: bool = Field(True, description="record the results in the results database")

    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = PruneConfig.GROUPS | {
        "Evaluation and results": (
            "tasks",
            "limit",
            "eval_seed",
            "database_url",
            "output",
            "overwrite",
            "dense",
            "save_model",
        ),
    }

    def dense_baseline(self) -> RunConfig:
        """The same model, calibration and evaluation, unpruned."""
        return self.model_copy(update={"dense": True, "output": None})

    def run_name(self, with_seed: bool = False) -> str:
        name = f"{Path(self.model).name}_dense" if self.dense else default_run_name(self)
        return f"{name}_seed{self.seed}" if with_seed else name

    def output_dir(self, root: Path | None = None, with_seed: bool = False) -> Path:
        """``output`` if set, else ``root/NAME`` (``runs/NAME`` by default)."""
        if self.output:
            return Path(self.output)
        return (root or Path("runs")) / self.run_name(with_seed)


class EvalRequest(BaseModel):
    """What one evaluation sees: the model (dense, or a pruned checkpoint folder) and the evaluation settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    checkpoint: str | None = None
    model_hash: str | None = Field(None, description="sha256 of the dense weights (of the checkpoint without a report)")
    method_key: str | None = Field(None, description="the pruning method's identity; None: dense")
    limit: int | None = Field(None, ge=1, le=MAX_EXAMPLES)
    seed: int = Field(1234, ge=0, le=MAX_SEED)
    task_args: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    data_fingerprint: str | None = Field(None, description="content hash of data_dir, taken once per evaluation")
    device: str = Field("auto", description="where the model is evaluated: auto, cpu, cuda[:N]")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the weights' precision")

    def identity(self) -> dict[str, Any]:
        """The evaluated model: the same for a checkpoint in the run cache and its copy in a run folder."""
        return {"model": self.model, "model_hash": self.model_hash, "method_key": self.method_key}

    def evaluation(self) -> dict[str, Any]:
        """The evaluation settings that change a metric (the data by its content hash)."""
        data = self.data_fingerprint or fingerprint(self.data_dir)
        precision = {"dtype": self.dtype} if self.dtype != "float32" else {}  # float32: the settings of before
        return evaluation_settings(self.limit, self.seed, self.task_args, data) | precision

    def data_path(self) -> Path | None:
        return Path(self.data_dir).expanduser() if self.data_dir else None

    def report(self) -> dict[str, Any] | None:
        """The checkpoint's report.json (None for a dense model or a folder without one)."""
        path = Path(self.checkpoint) / "report.json" if self.checkpoint else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EcoflapError(f"cannot read the checkpoint's report {path}: {exc}") from None


class SweepConfig(BaseModel):
    """A base run and the values to cross: every combination is one run, plus one dense run per model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: RunConfig
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    dense_baseline: bool = True
    parallel: int = Field(1, ge=1, le=256, description="runs at once: in this process, or on the deployment's workers")
    deployment: str | None = Field(None, description="fan out as runs of this deployment (workers)")

    def runs(self) -> list[RunConfig]:
        """The dense baselines (one per model) first, then every grid point."""
        keys = list(self.grid)
        points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]
        pruned = [_point(self.base, point) for point in points or [{}]]
        if not self.dense_baseline:
            return pruned
        dense: dict[str, RunConfig] = {}
        for run in pruned:
            dense.setdefault(run.model, run.dense_baseline())
        return list(dense.values()) + pruned

    def root(self) -> Path:
        return Path(self.base.output) if self.base.output else Path("runs")

    def with_seed(self) -> bool:
        return "seed" in self.grid


def _point(base: RunConfig, point: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(base.model_dump() | point | {"output": None})
    except ValidationError as exc:
        where = ", ".join(f"{k}={v}" for k, v in point.items())
        raise EcoflapError(f"{describe_validation_error(exc)} (grid point {where})") from None


def build_sweep(values: dict[str, Any]) -> SweepConfig:
    """A run file's keys -> a validated sweep; every mistake is one line naming the key."""
    sweep = {k: values.pop(k) for k in SWEEP_KEYS if k in values}
    base = RunConfig.build(**values)
    grid = sweep.get("grid") or {}
    if not isinstance(grid, dict):
        raise EcoflapError("invalid configuration: grid: must be a mapping of keys to lists of values")
    for key, choices in grid.items():
        if key not in RunConfig.model_fields or key in ("output", "dense"):
            raise EcoflapError(f"invalid configuration: grid.{key}: unknown key")
        if not isinstance(choices, list) or not choices:
            raise EcoflapError(f"invalid configuration: grid.{key}: must be a non-empty list of values")
    try:
        config = SweepConfig(base=base, **sweep)
    except ValidationError as exc:
        raise EcoflapError(describe_validation_error(exc)) from None
    config.runs()  # validates every grid point before anything runs
    return config
