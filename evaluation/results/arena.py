"""The allocator arena's queries: which grid cells are recorded, and allocators x pruners ranked per model and sparsity.

A cell of the arena is one run of ``ecoflap run`` (a model, a method, an evaluation). It is recorded when a complete
run of that model has the same method identity (``method_key``; dense: none), the same evaluation settings (the
results block's ``evaluation``) and a result for every task asked. The ranking is the leaderboard's (the best run of
each method per model, task, metric and target sparsity, best first), each row with the run's measured sparsity,
its scoring cost (the coarse step's seconds and peak memory: what the allocator's scores cost; 0 s without scores)
and the parameter-weighted allocated sparsity of each block.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ecoflap.evaluation.results.tables import finite

COLUMNS = [
    "model", "task", "metric", "sparsity", "rank", "allocator", "pruner", "method", "measured_sparsity", "value",
    "stderr", "dense_value", "delta", "higher_is_better", "scoring_s", "scoring_peak_mb", "run_id", "run_key",
]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """What identifies one cell's recorded run; ``any_of``: tasks of which one suffices (``--task auto``)."""

    model: str
    method_key: str | None
    evaluation: str
    tasks: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    @staticmethod
    def settings(evaluation: Mapping[str, Any]) -> str:
        """Evaluation settings as comparable text."""
        return json.dumps(evaluation, sort_keys=True, default=str)

    def done_by(self, run: Mapping[str, Any]) -> bool:
        """Whether ``run`` (a store run dict) is this cell's complete run."""
        config = run.get("config") or {}
        evaluation = config.get("evaluation")
        if run["status"] != "complete" or run["model"] != self.model or run["method_key"] != self.method_key:
            return False
        if evaluation is None or self.settings(evaluation) != self.evaluation:
            return False
        ran = set(config.get("tasks") or {}) | set(config.get("skipped") or {})
        return set(self.tasks) <= ran and (not self.any_of or bool(ran & set(self.any_of)))


def recorded(runs: Iterable[Mapping[str, Any]], cells: Sequence[Cell]) -> list[bool]:
    """For each cell, whether one of ``runs`` (the store's run dicts) records it."""
    runs = list(runs)
    return [any(cell.done_by(run) for run in runs) for cell in cells]


# ---- ranking ------------------------------------------------------------------------------------


def arena_rows(
    store: Any,
    model: str | None = None,
    task: str | None = None,
    sparsity: float | None = None,
    metrics: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every pruned method's best run per model, task, metric and sparsity, ranked best first (see COLUMNS, plus
    ``blocks``: the allocated sparsity per block). ``metrics``: task -> the one metric to rank by (others dropped)."""
    board = [row for row in store.leaderboard(model, task, sparsity) if row["method"] != "dense"]
    if metrics is not None:
        board = [row for row in board if row["metric"] == metrics.get(row["task"], row["metric"])]
    runs = {run_id: store.get_run(run_id) for run_id in dict.fromkeys(row["run_id"] for row in board)}
    return [_arena_row(row, runs[row["run_id"]]) for row in board]


def _arena_row(row: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    seconds, peak = scoring_cost(run)
    values = {column: row.get(column) for column in COLUMNS}
    values |= {"measured_sparsity": run["measured_sparsity"], "scoring_s": seconds, "scoring_peak_mb": peak}
    return values | {"blocks": block_allocation(run["allocation"])}


def scoring_cost(run: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(seconds, peak MB) of the run's coarse step (device memory on a GPU, else resident); (0, None) for a method
    that scores nothing; None where the run did not record it."""
    step = ((run.get("config") or {}).get("steps") or {}).get("coarse")
    if step:
        peak = step.get("peak_device_mb")
        return step["seconds"], peak if peak is not None else step.get("peak_rss_mb")
    seconds = (run.get("timings") or {}).get("coarse")
    if seconds is not None:
        return seconds, None
    return (0.0, None) if not (run.get("method") or {}).get("scorer") else (None, None)


def block_allocation(allocation: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The allocated (target) sparsity of each block in pruning order, weighted by the layers' parameters."""
    sums: dict[str, list[float]] = {}
    for row in allocation:
        if row["target"] is not None:
            weight = row["params"] or 1
            total = sums.setdefault(row["block"] or row["layer"], [0.0, 0.0])
            total[0] += row["target"] * weight
            total[1] += weight
    return [{"block": block, "target": value / weight} for block, (value, weight) in sums.items()]


# ---- the README table ---------------------------------------------------------------------------


def arena_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table per model, task, metric and sparsity: allocator x pruner cells, best first."""
    sections: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        sections.setdefault((row["model"], row["task"], row["metric"], row["sparsity"]), []).append(row)
    out = []
    for (model, task, metric, sparsity), cells in sections.items():
        arrow = "lower" if cells[0]["higher_is_better"] is False else "higher"
        out += [f"### {model}, sparsity {sparsity:g}: {task} {metric} ({arrow} is better)", ""]
        header = (
            "| rank | allocator | pruner | measured sparsity | "
            + f"{metric} | vs dense | scoring s | scoring peak MB |"
        )
        out += [header, "|---:|---|---|---:|---:|---:|---:|---:|"]
        out += [_markdown_row(cell) for cell in cells] + [""]
    return "\n".join(out)


def versus_uniform(rows: Sequence[Mapping[str, Any]], baseline: str = "uniform") -> list[dict[str, Any]]:
    """Per model, task, metric and allocator: its cells against the baseline's cell of the same pruner and sparsity
    (``at_or_above``: as good or better; ``worst``: the largest shortfall as a ratio of the baseline's value, signed
    so that a negative number is worse; ``never_below``: no cell worse than the baseline's)."""
    base = {_place(r): r for r in rows if r["allocator"] == baseline}
    summary: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        other = base.get(_place(r))
        if r["allocator"] in (baseline, None) or other is None or r["value"] is None or other["value"] is None:
            continue
        better = r["value"] >= other["value"] if r["higher_is_better"] is not False else r["value"] <= other["value"]
        sign = 1.0 if r["higher_is_better"] is not False else -1.0
        relative = sign * (r["value"] - other["value"]) / abs(other["value"]) + 0.0 if other["value"] else 0.0  # no -0
        entry = summary.setdefault((r["model"], r["task"], r["metric"], r["allocator"]), {
            "model": r["model"], "task": r["task"], "metric": r["metric"], "allocator": r["allocator"],
            "cells": 0, "at_or_above": 0, "worst": relative, "best": relative})  # fmt: skip
        entry["cells"] += 1
        entry["at_or_above"] += int(better)
        entry["worst"], entry["best"] = min(entry["worst"], relative), max(entry["best"], relative)
    return [entry | {"never_below": entry["at_or_above"] == entry["cells"]} for entry in summary.values()]


def _place(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a cell sits in the grid, whatever its allocator."""
    return row["model"], row["task"], row["metric"], row["sparsity"], row["pruner"]


def versus_uniform_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary of :func:`versus_uniform` as a markdown table."""
    out = ["| model | metric | allocator | cells at or above uniform | worst vs uniform | best vs uniform |",
           "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for e in summary:
        cells = f"{e['at_or_above']} of {e['cells']}" + (" (never below)" if e["never_below"] else "")
        out.append(f"| {e['model']} | {e['task']} {e['metric']} | {e['allocator']} | {cells} | {e['worst']:+.1%} | "
                   f"{e['best']:+.1%} |")  # fmt: skip
    return "\n".join(out)


def _markdown_row(cell: Mapping[str, Any]) -> str:
    values = [cell["rank"], cell["allocator"] or "-", cell["pruner"] or "-", _number(cell["measured_sparsity"], ".4f"),
              _number(cell["value"], ".4g"), _number(cell["delta"], "+.4g"), _number(cell["scoring_s"], ".1f"),
              _number(cell["scoring_peak_mb"], ".0f")]  # fmt: skip
    return "| " + " | ".join(str(v) for v in values) + " |"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def arena_document(rows: Sequence[Mapping[str, Any]], command: str) -> dict[str, Any]:
    """benchmarks/results/arena.json: the command that made it and every ranked cell (JSON-safe)."""
    from ecoflap.core.provenance import git_hash

    summary = versus_uniform(rows)
    return finite({"command": command, "git_hash": git_hash(), "columns": COLUMNS, "rows": list(rows),
                   "versus_uniform": summary})  # fmt: skip
