"""Validate a results document (lm-eval's JSON shape plus an ``ecoflap`` block) into rows for the store.

The ``ecoflap`` block is optional: a plain lm-eval results file (what ``lm_eval --output_path`` writes) is
recorded as a run of unknown method, kept apart from pruned runs as a dense one; its model is lm-eval's
``model_name`` (else the ``pretrained=`` of ``config.model_args``) and its run key the sha256 of its content.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.evaluation.results.method import legacy_method, method_columns, method_key

MAX_BIGINT = 2**63 - 1
LAST_DATE = 253402300799.0  # 9999-12-31T23:59:59Z: the latest UNIX time a date column holds
SHORT_TEXT = 64  # characters of the task_version and code_version columns
NAME_TEXT = 128  # characters of the task, metric and filter columns
NOT_A_NUMBER = ("N/A",)  # what lm-eval writes for a metric it could not compute (a stderr of one sample)
LM_EVAL_NAME_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")  # lm-eval's own order
LM_EVAL_NOTE = "plain lm-eval results file (no ecoflap block): method unknown, recorded as dense"


class AllocationEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    layer: str = Field(min_length=1, max_length=255)
    tower: str | None = Field(None, max_length=64)
    block: str | None = Field(None, max_length=255)
    target: float | None = Field(None, ge=0.0, le=1.0)
    measured: float | None = Field(None, ge=0.0, le=1.0)
    params: int | None = Field(None, ge=0, le=MAX_BIGINT)


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


class StepEntry(BaseModel):
    """One step's cost (``ecoflap.core.devices.StepMeasure``): time, peak resident and peak device memory."""

    model_config = ConfigDict(extra="allow")

    seconds: float = Field(ge=0.0, allow_inf_nan=False)
    peak_rss_mb: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    start_rss_mb: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    peak_device_mb: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    peak_rss_scope: str | None = Field(None, max_length=16)
    device: str | None = Field(None, max_length=32)
    threads: int | None = Field(None, ge=1)


class EcoflapBlock(BaseModel):
    """The ``ecoflap`` block: what was pruned, how, and with which seeds and libraries."""

    model_config = ConfigDict(extra="allow")

    run_key: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=255)
    model_hash: str | None = Field(None, max_length=128)
    checkpoint: str | None = Field(None, max_length=1024)
    dense: bool = False
    pruner: str | None = None
    scorer: str | None = None
    allocator: str | None = None
    method: MethodBlock | None = None
    method_key: str | None = Field(None, min_length=1, max_length=64)
    target_sparsity: float | None = Field(None, ge=0.0, le=1.0)
    measured_sparsity: float | None = Field(None, ge=0.0, le=1.0)
    allocation: list[AllocationEntry] = Field(default_factory=list)
    calibration: dict[str, Any] | None = None
    seeds: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    timings_s: dict[str, Any] = Field(default_factory=dict)
    peak_memory_mb: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    steps: dict[str, StepEntry] = Field(default_factory=dict)
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
    date: float | None = Field(None, ge=0.0, le=LAST_DATE)
    git_hash: str | None = Field(None, max_length=SHORT_TEXT)
    ecoflap: EcoflapBlock | None = None


@dataclass
class ParsedRun:
    """A document as rows: the run's columns, then its child rows (without run ids)."""

    run_key: str
    columns: dict[str, Any]
    allocation: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    artefacts: list[dict[str, Any]] = field(default_factory=list)


def validate(document: Any) -> ResultsDocument:
    """The document, checked; a missing or malformed key -> EcoflapError naming it (no ``ecoflap`` block: lm-eval's)."""
    if not isinstance(document, dict):
        raise EcoflapError(f"invalid results document: expected a JSON object, got {type(document).__name__}")
    where = _nul_character(document)
    if where is not None:
        where = where.replace("\x00", "\\u0000")
        raise EcoflapError(f"invalid results document: {where or 'a key'}: text holds a NUL character (\\u0000)")
    try:
        doc = ResultsDocument.model_validate(document)
        if doc.ecoflap is None:
            doc.ecoflap = EcoflapBlock.model_validate(lm_eval_block(document, doc))
    except ValidationError as exc:
        raise EcoflapError(describe_validation_error(exc, "results document", "document")) from None
    metric_rows(doc)  # every metric value a number (or lm-eval's "N/A"), every name short enough
    return doc


def _nul_character(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) holding a NUL character, which PostgreSQL cannot store."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return inner
        found = _nul_character(item, inner)
        if found is not None:
            return found
    return None


def lm_eval_block(document: dict[str, Any], doc: ResultsDocument) -> dict[str, Any]:
    """The ``ecoflap`` block of a plain lm-eval results file: its model, dense (method unknown), keyed by content."""
    model = lm_eval_model(document)
    if model is None:
        raise EcoflapError(
            "invalid results document: no ecoflap block and no model name (lm-eval's model_name or "
            "config.model_args pretrained=...): add an ecoflap block with run_key and model"
        )
    content = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return {
        "run_key": hashlib.sha256(content.encode()).hexdigest(),
        "model": model,
        "dense": True,
        "versions": {"lm_eval": document.get("lm_eval_version")} if document.get("lm_eval_version") else {},
        "source": LM_EVAL_NOTE,
    }


def lm_eval_model(document: dict[str, Any]) -> str | None:
    """lm-eval's ``model_name``, else the model named in ``config.model_args`` (a string or a mapping)."""
    if isinstance(document.get("model_name"), str) and document["model_name"].strip():
        return document["model_name"].strip()
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    args = config.get("model_args")
    if isinstance(args, dict):
        return next((str(args[key]) for key in LM_EVAL_NAME_KEYS if args.get(key)), None)
    if isinstance(args, str):
        pairs = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
        return next((pairs[key].strip() for key in LM_EVAL_NAME_KEYS if pairs.get(key, "").strip()), None)
    return None


def parse_document(document: Any, artefacts: dict[str, str] | None = None) -> ParsedRun:
    """Rows for the store from a results document (``artefacts``: extra kind -> path entries)."""
    doc = validate(document)
    block = doc.ecoflap
    assert block is not None  # validate made it for a plain lm-eval file
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
    assert block is not None
    extra = {"calibration": block.calibration, "tasks": doc.configs, "skipped": doc.skipped}
    extra |= {"source": block.source} if getattr(block, "source", None) else {}
    extra |= (
        {"steps": {name: step.model_dump(exclude_unset=True) for name, step in block.steps.items()}}
        if block.steps
        else {}
    )
    extra |= {"evaluation": block.evaluation} if isinstance(getattr(block, "evaluation", None), dict) else {}
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
        "code_version": _text(block.versions.get("ecoflap"), "ecoflap.versions.ecoflap"),
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
            if not filter_:
                continue
            where = f"results.{task}.{key}"
            number = _metric_value(value, where)
            if metric.endswith("_stderr"):
                continue
            _short_names(where, task, metric, filter_)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_,
                    "value": number,
                    "stderr": metric_number(values.get(f"{metric}_stderr,{filter_}")),
                    "n_samples": _samples(doc.n_samples.get(task), f"n-samples.{task}"),
                    "higher_is_better": doc.higher_is_better.get(task, {}).get(metric),
                    "task_version": _text(doc.versions.get(task), f"versions.{task}"),
                }
            )
    return rows


def _metric_value(value: Any, where: str) -> float | None:
    """A metric of the results: a number (NaN -> None), null or lm-eval's "N/A"; anything else is an error."""
    if value is None or value in NOT_A_NUMBER:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EcoflapError(f"invalid results document: {where}: {value!r} is not a number")
    try:
        return metric_number(value)
    except OverflowError:
        raise EcoflapError(
            f"invalid results document: {where}: a {len(str(value))}-digit integer is too large"
        ) from None


def _short_names(where: str, *names: str) -> None:
    for name in names:
        if not name or len(name) > NAME_TEXT:
            raise EcoflapError(
                f"invalid results document: {where[:80]}: task, metric and filter names need 1 to {NAME_TEXT} "
                "characters"
            )


def document_metrics(document: Any) -> list[dict[str, Any]]:
    """The metric rows of a results document (for comparisons that need no database)."""
    return metric_rows(validate(document))


def metric_number(value: Any) -> float | None:
    """A metric value of an lm-eval results document as a float; lm-eval's "N/A", NaN or anything else -> None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _samples(entry: Any, where: str) -> int | None:
    """lm-eval's sample count of a task: a number or ``{"original": N, "effective": N}``."""
    if isinstance(entry, dict):
        entry = entry.get("effective", entry.get("original"))
    if entry is None:
        return None
    if isinstance(entry, bool) or not isinstance(entry, int | float) or not 0 <= entry <= MAX_BIGINT:
        raise EcoflapError(f"invalid results document: {where}: {entry!r} is not a sample count")
    return int(entry)


def _text(value: Any, where: str) -> str | None:
    """A version or hash as text of at most SHORT_TEXT characters."""
    if value is None:
        return None
    text = str(value)
    if len(text) > SHORT_TEXT:
        raise EcoflapError(f"invalid results document: {where}: longer than {SHORT_TEXT} characters")
    return text
