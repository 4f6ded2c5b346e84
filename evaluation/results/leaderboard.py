"""Leaderboard: the best run of each method per model/task/metric/sparsity, against the dense baseline.

A method is its full identity (``method_key``): runs that differ in any setting are separate rows.
Two methods whose labels read the same (an old run's method, known only by its names, beside a new
run's) get the first characters of their key appended, so that every row can be told apart.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ecoflap.evaluation.results.method import COLUMNS as METHOD_COLUMNS
from ecoflap.evaluation.results.method import SPARSITY_DIGITS, method_of, run_label, series_key

COLUMNS = [
    "model", "task", "metric", "filter", "sparsity", "rank", "method", "pruner", "scorer", "allocator",
    *METHOD_COLUMNS, "value", "stderr", "dense_value", "delta", "higher_is_better", "runs", "run_id", "run_key",
    "method_key",
]  # fmt: skip
KEY_CHARS = 8  # characters of the series key appended to a label that two methods share


def leaderboard_rows(entries: list[dict[str, Any]], sparsity: float | None = None) -> list[dict[str, Any]]:
    """Rows from metric entries (one per run and metric, joined with the run's columns); see COLUMNS."""
    entries = [entry for entry in entries if entry["value"] is not None]
    baselines = _dense_baselines(entries)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if not entry["dense"]:
            groups[(*_metric_key(entry), round(entry["target_sparsity"], SPARSITY_DIGITS), entry["method_key"])].append(
                entry
            )
    rows = [_row(_best(group), len(group), baselines.get(_metric_key(group[0]))) for group in groups.values()]
    rows += [_row(entry, _dense_count(entries, entry), entry) for entry in baselines.values()]
    _tell_apart(rows)
    if sparsity is not None:
        rows = [row for row in rows if round(row["sparsity"], SPARSITY_DIGITS) == round(sparsity, SPARSITY_DIGITS)]
    return _ranked(rows)


def _tell_apart(rows: list[dict[str, Any]]) -> None:
    """Append ``#key`` to each label that methods with different settings (sparsity aside) share."""
    series: dict[str, set[str | None]] = defaultdict(set)
    for row in rows:
        series[row["method"]].add(row["series"])
    for row in rows:
        if len(series[row["method"]]) > 1:
            row["method"] = f"{row['method']} #{row['series'][:KEY_CHARS]}"


def _metric_key(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    return entry["model"], entry["task"], entry["metric"], entry["filter"]


def _recency(entry: dict[str, Any]) -> tuple[Any, int]:
    return entry["updated_at"], entry["id"]


def _dense_baselines(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Per model and metric, the entry of the most recently recorded dense run."""
    baselines: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for entry in sorted((e for e in entries if e["dense"]), key=_recency):
        baselines[_metric_key(entry)] = entry
    return baselines


def _dense_count(entries: list[dict[str, Any]], baseline: dict[str, Any]) -> int:
    return sum(1 for e in entries if e["dense"] and _metric_key(e) == _metric_key(baseline))


def _higher_is_better(group: list[dict[str, Any]]) -> bool:
    """As the runs recorded it (unknown: higher is better, lm-eval's default)."""
    return next((e["higher_is_better"] for e in group if e["higher_is_better"] is not None), True)


def _best(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The best value (ties: the most recent run)."""
    sign = 1 if _higher_is_better(group) else -1
    return max(group, key=lambda e: (sign * e["value"], _recency(e)))


def _row(entry: dict[str, Any], runs: int, baseline: dict[str, Any] | None) -> dict[str, Any]:
    dense_value = baseline["value"] if baseline else None
    return {
        "model": entry["model"],
        "task": entry["task"],
        "metric": entry["metric"],
        "filter": entry["filter"],
        "sparsity": entry["target_sparsity"],
        "method": run_label(entry),
        "series": series_key(method_of(entry)),
        "method_key": entry["method_key"],
        "pruner": entry["pruner"],
        "scorer": entry["scorer"],
        "allocator": entry["allocator"],
        **{name: entry[name] for name in METHOD_COLUMNS},
        "value": entry["value"],
        "stderr": entry["stderr"],
        "dense_value": dense_value,
        "delta": None if dense_value is None else entry["value"] - dense_value,
        "higher_is_better": entry["higher_is_better"],
        "runs": runs,
        "run_id": entry["id"],
        "run_key": entry["run_key"],
    }


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sorted by model/task/metric/sparsity, best first, with a rank inside each of those."""

    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        sign = -1 if row["higher_is_better"] is not False else 1
        return (*_metric_key(row), round(row["sparsity"], SPARSITY_DIGITS), sign * row["value"], row["method"])

    rows.sort(key=order)
    previous, rank = None, 0
    for row in rows:
        group = (*_metric_key(row), round(row["sparsity"], SPARSITY_DIGITS))
        rank = rank + 1 if group == previous else 1
        row["rank"], previous = rank, group
    return [{column: row[column] for column in COLUMNS} for row in rows]
