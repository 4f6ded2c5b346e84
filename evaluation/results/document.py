"""Validate a results document (lm-eval's JSON shape plus an ``ecoflap`` block) into rows for the store."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.evaluation.results.method import legacy_method, method_columns, method_key


class AllocationEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    layer: str = Field(min_length=1, max_length=255)
    tower: str | None = None
    block: str | None = None
    target: float | None = None
    measured: float | None = None
    params: int | None = None


class ArtefactEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=1024)


class MethodBlock(BaseModel):
    """``ecoflap.method``: the full method identity (unknown keys are kept: they are part of the identity)."""

    model_config = ConfigDict(extra="allow")

    pruner: str | None = Field(None, max_length=64)
    pruner_options: dict[str, Any] | None = None
    nm: str | None = Field(None, max_length=16, pattern=r"^\d+:\d+$")
    scorer: str | None = Field(None, max_length=64)
    scorer_options: dict[str, Any] | None = None
    allocator: str | None = Field(None, max_length=64)
    allocation_file: str | None = None
    granularity: str | None = Field(None, max_length=16)
    aggregation: str | None = Field(None, max_length=16)
    max_sparsity: float | None = Field(None, ge=0.0, le=1.0)
    per_tower: bool | None = None
    towers: list[str] | None = None
    targets: list[str] | None = None
    ignore: list[str] | None = None
    calibration: dict[str, Any] | None = None


class EcoflapBlock(BaseModel):
    """The ``ecoflap`` block: what was pruned, how, and with which seeds and libraries."""

    model_config = ConfigDict(extra="allow")

    run_key: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=255)
    model_hash: str | None = None
    checkpoint: str | None = None
    dense: bool = False
    pruner: str | None = None
    scorer: str | None = None
    allocator: str | None = None
    method: MethodBlock | None = None
    method_key: str | None = Field(None, min_length=1, max_length=64)
    target_sparsity: float | None = None
    measured_sparsity: float | None = None
    allocation: list[AllocationEntry] = Field(default_factory=list)
    calibration: dict[str, Any] | None = None
    seeds: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    timings_s: dict[str, Any] = Field(default_factory=dict)
    peak_memory_mb: float | None = None
    status: str = Field("complete", max_length=32)
    artefacts: list[ArtefactEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sparsity_and_layers(self) -> EcoflapBlock:
        if self.target_sparsity is None:
            if not self.dense:
                raise ValueError("target_sparsity is required for a pruned run (dense: false)")
            self.target_sparsity = 0.0
        layers = [entry.layer for entry in self.allocation]
        if len(set(layers)) != len(layers):
            twice = sorted({name for name in layers if layers.count(name) > 1})
            raise ValueError(f"allocation lists layer {twice[0]!r} more than once")
        return self

    def identity(self) -> dict[str, Any] | None:
        """The method as written (None for a dense run); an older document's from its flat names."""
        if self.dense:
            return None
        if self.method is None:
            return legacy_method(self.pruner, self.scorer, self.allocator)
        return self.method.model_dump(exclude_unset=True)


class ResultsDocument(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    results: dict[str, dict[str, Any]]
    configs: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    n_samples: dict[str, Any] = Field(default_factory=dict, alias="n-samples")
    higher_is_better: dict[str, dict[str, bool | None]] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    date: float | None = None
    git_hash: str | None = None
    ecoflap: EcoflapBlock


@dataclass
class ParsedRun:
    """A document as rows: the run's columns, then its child rows (without run ids)."""

    run_key: str
    columns: dict[str, Any]
    allocation: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    artefacts: list[dict[str, Any]] = field(default_factory=list)


def validate(document: Any) -> ResultsDocument:
    """The document, checked; a missing or malformed key -> EcoflapError naming it."""
    if not isinstance(document, dict):
        raise EcoflapError(f"invalid results document: expected a JSON object, got {type(document).__name__}")
    try:
        return ResultsDocument.model_validate(document)
    except ValidationError as exc:
        raise EcoflapError(describe_validation_error(exc, "results document", "document")) from None


def parse_document(document: Any, artefacts: dict[str, str] | None = None) -> ParsedRun:
    """Rows for the store from a results document (``artefacts``: extra kind -> path entries)."""
    doc = validate(document)
    block = doc.ecoflap
    files = [entry.model_dump() for entry in block.artefacts]
    if block.checkpoint:
        files.append({"kind": "checkpoint", "path": block.checkpoint})
    files += [{"kind": kind, "path": path} for kind, path in (artefacts or {}).items()]
    return ParsedRun(
        run_key=block.run_key,
        columns=_run_columns(doc),
        allocation=[entry.model_dump() for entry in block.allocation],
        metrics=metric_rows(doc),
        artefacts=list({(f["kind"], f["path"]): f for f in files}.values()),
    )


def _run_columns(doc: ResultsDocument) -> dict[str, Any]:
    block = doc.ecoflap
    extra = {"calibration": block.calibration, "tasks": doc.configs, "skipped": doc.skipped}
    method = block.identity()
    return {
        "model": block.model,
        "model_hash": block.model_hash,
        "checkpoint": block.checkpoint,
        "dense": block.dense,
        **{name: getattr(block, name) or (method or {}).get(name) for name in ("pruner", "scorer", "allocator")},
        "method": method,
        "method_key": None if method is None else (block.method_key or method_key(method)),
        **method_columns(method),
        "target_sparsity": block.target_sparsity,
        "measured_sparsity": block.measured_sparsity,
        "config": {"run": doc.config, **extra},
        "seeds": block.seeds,
        "library_versions": block.versions,
        "code_version": _text(block.versions.get("ecoflap")),
        "git_hash": doc.git_hash,
        "status": block.status,
        "timings": block.timings_s,
        "peak_memory_mb": block.peak_memory_mb,
        "evaluated_at": datetime.fromtimestamp(doc.date, timezone.utc).replace(tzinfo=None) if doc.date else None,
    }


def metric_rows(doc: ResultsDocument) -> list[dict[str, Any]]:
    """One row per ``"<metric>,<filter>"`` key of every task; ``"N/A"`` or NaN values become None."""
    rows = []
    for task, values in doc.results.items():
        for key, value in values.items():
            metric, _, filter_ = key.partition(",")
            if not filter_ or metric.endswith("_stderr"):
                continue
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_,
                    "value": metric_number(value),
                    "stderr": metric_number(values.get(f"{metric}_stderr,{filter_}")),
                    "n_samples": _samples(doc.n_samples.get(task)),
                    "higher_is_better": doc.higher_is_better.get(task, {}).get(metric),
                    "task_version": _text(doc.versions.get(task)),
                }
            )
    return rows


def document_metrics(document: Any) -> list[dict[str, Any]]:
    """The metric rows of a results document (for comparisons that need no database)."""
    return metric_rows(validate(document))


def metric_number(value: Any) -> float | None:
    """A metric value of an lm-eval results document as a float; lm-eval's "N/A", NaN or anything else -> None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _samples(entry: Any) -> int | None:
    if isinstance(entry, dict):
        entry = entry.get("effective", entry.get("original"))
    return int(entry) if isinstance(entry, int | float) and not isinstance(entry, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
