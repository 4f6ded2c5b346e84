"""Metric-by-metric comparison of two runs, and the regression gate (tolerated drops or absolute floors).

A tolerance is absolute (``vqa:acc=0.01``: at most 0.01 below the baseline) or relative to the baseline's
value (``wikitext:word_perplexity=2%``: at most 2% of the baseline above it, for a lower-is-better metric).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError

MAX_DOCUMENT_BYTES = 256 << 20  # a results file (lm-eval writes its samples to other files)
EPSILON = 1e-9  # float noise allowed on top of a tolerance (0.91 - 0.89 > 0.02 in binary)
MetricKey = tuple[str, str, str]  # task, metric, filter


@dataclass
class Check:
    """One checked metric; ``status`` is ok, regressed, missing (absent from the candidate) or no baseline."""

    task: str
    metric: str
    filter: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    limit: str
    status: str

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "missing")

    def describe(self) -> str:
        if self.status == "missing":
            return f"{self.task}:{self.metric} (missing from the candidate)"
        reference = "" if self.baseline is None else f"{self.baseline:.4g} -> "
        return f"{self.task}:{self.metric} ({reference}{self.candidate:.4g}, limit {self.limit})"


CHECK_COLUMNS = ["task", "metric", "filter", "baseline", "candidate", "delta", "limit", "status"]


def metric_map(rows: Iterable[Mapping[str, Any]]) -> dict[MetricKey, Mapping[str, Any]]:
    return {(row["task"], row["metric"], row["filter"]): row for row in rows}


def metrics_of(source: Any) -> list[dict[str, Any]]:
    """Metric rows of a run dict (``metrics``), a results document, a path to one, or a list of rows."""
    from ecoflap.evaluation.results.document import document_metrics

    if isinstance(source, str | Path):
        return document_metrics(read_document(Path(source)))  # a file holds a document, whatever its JSON
    if isinstance(source, list):
        return source
    if isinstance(source, dict) and isinstance(source.get("metrics"), list):
        return source["metrics"]
    return document_metrics(source)


def read_document(path: Path) -> Any:
    """The JSON of a results file (at most MAX_DOCUMENT_BYTES: /dev/zero or a stray dump is not read whole)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise EcoflapError(f"cannot read results file {path}: larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
        return json.loads(data.decode("utf-8-sig"))  # a byte-order mark is no mistake
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise EcoflapError(f"cannot read results file {path}: {reason}") from None


def compare_runs(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every metric of either run: both values, delta (second - first), stderrs and which is better."""
    a, b = metric_map(first), metric_map(second)
    rows = []
    for key in sorted(a.keys() | b.keys()):
        left, right = a.get(key, {}), b.get(key, {})
        value_a, value_b = left.get("value"), right.get("value")
        higher = right.get("higher_is_better", left.get("higher_is_better"))
        delta = None if value_a is None or value_b is None else value_b - value_a
        rows.append(
            {
                "task": key[0], "metric": key[1], "filter": key[2],
                "value_a": value_a, "stderr_a": left.get("stderr"),
                "value_b": value_b, "stderr_b": right.get("stderr"),
                "delta": delta, "higher_is_better": higher, "better": _better(delta, higher),
            }
        )  # fmt: skip
    return rows


def _better(delta: float | None, higher: bool | None) -> str:
    if delta is None:
        return "-"
    if delta == 0:
        return "="
    return "b" if (delta > 0) == (higher is not False) else "a"


# ---- tolerances and floors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """An allowed drop: ``amount`` in the metric's units, or (``relative``) a fraction of the baseline's value."""

    amount: float
    relative: bool = False

    def allowed(self, baseline: float) -> float:
        return self.amount * abs(baseline) if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"


TOLERANCE_SYNTAX = "write TASK:METRIC=DROP or TASK:METRIC=PERCENT%, e.g. vqa:acc=0.01 or wikitext:*=2%"


def parse_tolerances(specs: Iterable[str]) -> dict[str, Tolerance]:
    """``TASK:METRIC=0.01`` (absolute) or ``TASK:METRIC=2%`` (of the baseline) -> {"TASK:METRIC": Tolerance}.

    TASK and METRIC may use * patterns.
    """
    tolerances = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or ":" not in name:
            raise EcoflapError(f"invalid tolerance {spec!r}: {TOLERANCE_SYNTAX}")
        tolerances[name.strip()] = parse_tolerance(value, f"tolerance {spec!r}")
    return tolerances


def tolerance_map(tolerances: Mapping[str, Any] | Iterable[str]) -> dict[str, Tolerance]:
    """``{"TASK:METRIC": 0.01 or "2%"}`` or ``["TASK:METRIC=DROP", ...]`` -> {"TASK:METRIC": Tolerance}, checked."""
    if not isinstance(tolerances, Mapping):
        return parse_tolerances(tolerances)
    for name in tolerances:
        if ":" not in str(name):
            raise EcoflapError(f"invalid tolerance name {name!r}: write TASK:METRIC, e.g. vqa:acc")
    return {name: parse_tolerance(value, f"tolerance {name!r}") for name, value in tolerances.items()}


def parse_tolerance(value: Any, what: str) -> Tolerance:
    """``0.01`` -> absolute; ``"2%"`` -> relative (0.02 of the baseline); a Tolerance as it is. Finite and >= 0."""
    if isinstance(value, Tolerance):
        return value
    text = value.strip() if isinstance(value, str) else value
    relative = isinstance(text, str) and text.endswith("%")
    number = _number(text[:-1] if relative else text, what)
    if not (math.isfinite(number) and number >= 0):
        raise EcoflapError(f"invalid {what}: the allowed drop must be a finite number >= 0 ({TOLERANCE_SYNTAX})")
    return Tolerance(number / 100 if relative else number, relative)


def _matches(pattern: str, key: MetricKey) -> bool:
    """``task:metric`` or ``task:metric,filter`` (fnmatch patterns) against a metric key."""
    task_pattern, _, metric_pattern = pattern.partition(":")
    metric_name = f"{key[1]},{key[2]}" if "," in metric_pattern else key[1]
    return fnmatch.fnmatchcase(key[0], task_pattern) and fnmatch.fnmatchcase(metric_name, metric_pattern)


def check_against_baseline(
    candidate: list[dict[str, Any]], baseline: list[dict[str, Any]], tolerances: Mapping[str, float | Tolerance]
) -> list[Check]:
    """Each baseline metric a tolerance names (first matching pattern wins) against the candidate's value."""
    tolerances = {name: parse_tolerance(value, f"tolerance {name!r}") for name, value in tolerances.items()}
    before, after = metric_map(baseline), metric_map(candidate)
    checks, used = [], set()
    for key in sorted(before):
        pattern = next((p for p in tolerances if _matches(p, key)), None)
        if pattern is None:
            continue
        used.add(pattern)
        higher = before[key].get("higher_is_better") is not False
        value = after.get(key, {}).get("value")
        checks.append(_drop_check(key, before[key].get("value"), value, tolerances[pattern], higher))
    unused = [p for p in tolerances if p not in used]
    if unused:
        names = ", ".join(f"{t}:{m}" for t, m, _ in sorted(before)) or "none"
        raise EcoflapError(f"tolerance {unused[0]} matches no metric of the baseline (its metrics: {names})")
    return checks


def _drop_check(key: MetricKey, before: float | None, after: float | None, tolerance: Tolerance, higher: bool) -> Check:
    limit = f"{'drop' if higher else 'rise'} <= {tolerance}"
    if after is None:
        return Check(*key, before, None, None, limit, "missing")
    if before is None:
        return Check(*key, None, after, None, limit, "no baseline")
    allowed = tolerance.allowed(before)
    limit += f" ({allowed:.4g})" if tolerance.relative else ""
    drop = (before - after) if higher else (after - before)
    return Check(*key, before, after, after - before, limit, "regressed" if not drop <= allowed + EPSILON else "ok")


def load_floors(path: Path) -> dict[str, float]:
    """A YAML mapping ``task: {metric: floor}`` -> {"task:metric": floor} (a ceiling for lower-is-better)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise EcoflapError(f"cannot read floors file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise EcoflapError(f"floors file {path} must map each task to {{metric: floor}}, e.g. vqa: {{acc: 0.85}}")
    return {f"{task}:{name}": _finite(v, f"floor {task}:{name}") for task, m in data.items() for name, v in m.items()}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise EcoflapError(f"invalid {what}: {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise EcoflapError(f"invalid {what}: {value!r} is not a number") from None


def _finite(value: Any, what: str) -> float:
    number = _number(value, what)
    if not math.isfinite(number):
        raise EcoflapError(f"invalid {what}: {value!r} is not a finite number")
    return number


def check_floors(candidate: list[dict[str, Any]], floors: Mapping[str, float]) -> list[Check]:
    """Each floor against the candidate: >= floor, or <= for a metric where lower is better."""
    after = metric_map(candidate)
    checks = []
    for pattern, floor in floors.items():
        keys = [key for key in sorted(after) if _matches(pattern, key)]
        if not keys:
            task, _, metric = pattern.partition(":")
            checks.append(Check(task, metric, "-", None, None, None, f"{floor:g}", "missing"))
        for key in keys:
            higher = after[key].get("higher_is_better") is not False
            value = after[key].get("value")
            ok = value is not None and (value >= floor - EPSILON if higher else value <= floor + EPSILON)
            limit = f"{'>=' if higher else '<='} {floor:g}"
            checks.append(Check(*key, None, value, None, limit, "ok" if ok else "regressed"))
    return checks


def check_rows(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]


def failure_message(checks: list[Check]) -> str:
    failed = [check for check in checks if check.failed]
    return f"{len(failed)} of {len(checks)} checked metrics regressed: " + "; ".join(c.describe() for c in failed)
