"""What each dashboard page shows, as plain JSON-ready data: the HTML page, its JSON twin and its CSV come from here."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.results.arena import arena_rows
from ecoflap.evaluation.results.comparison import compare_runs
from ecoflap.evaluation.results.leaderboard import COLUMNS as LEADERBOARD_COLUMNS
from ecoflap.evaluation.results.method import SPARSITY_DIGITS

FILTERS = ("model", "task", "metric", "sparsity", "method")
CURVE_COLUMNS = ["model", "task", "metric", "method", "sparsity", "value", "stderr", "delta", "run_id"]
RUN_COLUMNS = ["id", "run_key", "model", "method", "target_sparsity", "measured_sparsity", "status", "tags",
               "updated_at"]  # fmt: skip
METRIC_COLUMNS = ["task", "metric", "filter", "value", "stderr", "n_samples", "higher_is_better", "task_version"]
ALLOCATION_COLUMNS = ["layer", "tower", "block", "target", "measured", "params"]
COMPARE_COLUMNS = ["task", "metric", "filter", "value_a", "stderr_a", "value_b", "stderr_b", "delta",
                   "higher_is_better", "better"]  # fmt: skip
SETTINGS = ["model", "model_hash", "method", "method_key", "target_sparsity", "measured_sparsity", "status",
            "checkpoint", "git_hash", "code_version", "seeds", "library_versions", "timings", "peak_memory_mb",
            "evaluated_at", "updated_at"]  # fmt: skip


class BadRequest(EcoflapError):
    """A query parameter the dashboard cannot use (shown as a 400 page)."""


# ---- query parameters ---------------------------------------------------------------------------


def sparsity_value(text: str | None) -> float | None:
    """``"0.5"`` -> 0.5; empty -> None; anything else is a BadRequest."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"sparsity must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"sparsity must be a number, not {text!r}")
    return value


def filters_from(params: Mapping[str, str]) -> dict[str, Any]:
    """The leaderboard filters given (empty ones dropped); sparsity as a number."""
    chosen = {name: params.get(name, "").strip() for name in FILTERS}
    chosen = {name: value for name, value in chosen.items() if value}
    if "sparsity" in chosen:
        chosen["sparsity"] = sparsity_value(chosen["sparsity"])
    return chosen


# ---- leaderboard --------------------------------------------------------------------------------


@dataclass
class Leaderboard:
    """Rows of the leaderboard after filters and sort, and the values each filter can take."""

    rows: list[dict[str, Any]]
    filters: dict[str, Any]
    options: dict[str, list[Any]]
    sort: str
    order: str
    total: int

    def as_json(self) -> dict[str, Any]:
        return {"filters": self.filters, "sort": self.sort, "order": self.order, "total": self.total,
                "rows": self.rows, "options": self.options}  # fmt: skip


def leaderboard(store: Any, params: Mapping[str, str]) -> Leaderboard:
    """The store's leaderboard filtered by model, task, metric, sparsity and method, sorted by any column."""
    chosen = filters_from(params)
    every = store.leaderboard()
    rows = [row for row in every if _matches(row, chosen)]
    sort, order = params.get("sort") or "", params.get("order") or "asc"
    if sort and sort not in LEADERBOARD_COLUMNS:
        raise BadRequest(f"cannot sort by {sort!r}: choose one of {', '.join(LEADERBOARD_COLUMNS)}")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be asc or desc, not {order!r}")
    if sort:
        rows = sorted_rows(rows, sort, order == "desc")
    return Leaderboard(rows, chosen, _options(every), sort, order, len(every))


def _matches(row: dict[str, Any], chosen: dict[str, Any]) -> bool:
    for name, value in chosen.items():
        if name == "sparsity":
            if round(row["sparsity"], SPARSITY_DIGITS) != round(value, SPARSITY_DIGITS):
                return False
        elif row[name] != value:
            return False
    return True


def sorted_rows(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Rows sorted by ``column``; empty values last in either direction."""
    present = [row for row in rows if row.get(column) is not None]
    empty = [row for row in rows if row.get(column) is None]
    return sorted(present, key=lambda row: _sort_key(row[column]), reverse=descending) + empty


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _options(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    options = {name: sorted({row[name] for row in rows if row[name] is not None}) for name in FILTERS}
    options["sparsity"] = sorted({round(row["sparsity"], SPARSITY_DIGITS) for row in rows})
    return options


# ---- curves -------------------------------------------------------------------------------------


@dataclass
class Curves:
    """One metric against sparsity for one model and task: one series per method, the dense value apart."""

    model: str | None
    task: str | None
    metric: str | None
    higher_is_better: bool | None
    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dense: dict[str, Any] | None = None
    options: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        points = [point for points in self.series.values() for point in points]
        points += [self.dense] if self.dense else []
        return [{"model": self.model, "task": self.task, "metric": self.metric, **p} for p in points]

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "dense": self.dense,
                "series": [{"method": m, "points": points} for m, points in self.series.items()],
                "options": self.options}  # fmt: skip


def curves(store: Any, params: Mapping[str, str]) -> Curves:
    """The chosen model/task/metric (default: the first of each that has results) from the leaderboard rows."""
    chosen, options, rows = choose_metric(store.leaderboard(), params)
    curve = Curves(**chosen, higher_is_better=rows[0]["higher_is_better"] if rows else None, options=options)
    for row in sorted(rows, key=lambda r: (r["method"], r["sparsity"])):
        point = {key: row[key] for key in ("method", "sparsity", "value", "stderr", "delta", "run_id")}
        if row["method"] == "dense":
            curve.dense = point
        else:
            curve.series.setdefault(row["method"], []).append(point)
    return curve


def choose_metric(
    every: list[dict[str, Any]], params: Mapping[str, str]
) -> tuple[dict[str, str | None], dict[str, list[str]], list[dict[str, Any]]]:
    """The model, task and metric asked for (default: the first of each that has rows), the values each can take,
    and the rows of that choice."""
    chosen: dict[str, str | None] = {}
    options: dict[str, list[str]] = {}
    rows = every
    for name in ("model", "task", "metric"):
        options[name] = sorted({row[name] for row in rows})
        value = (params.get(name) or "").strip() or (options[name][0] if options[name] else None)
        if value is not None and value not in options[name]:
            raise BadRequest(f"no results for {name} {value!r} (there are: {', '.join(options[name]) or 'none'})")
        chosen[name] = value
        rows = [row for row in rows if row[name] == value]
    return chosen, options, rows


# ---- arena --------------------------------------------------------------------------------------


@dataclass
class Arena:
    """Allocator x pruner cells of one model, task and metric: a ranking per target sparsity (see results.arena)."""

    model: str | None
    task: str | None
    metric: str | None
    higher_is_better: bool | None
    sections: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [row for section in self.sections for row in section["rows"]]

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "sections": self.sections,
                "options": self.options}  # fmt: skip


def arena(store: Any, params: Mapping[str, str]) -> Arena:
    """The arena's ranking of the chosen model/task/metric (default: the first of each), one section per sparsity."""
    chosen, options, rows = choose_metric(arena_rows(store), params)
    view = Arena(**chosen, higher_is_better=rows[0]["higher_is_better"] if rows else None, options=options)
    for row in rows:  # ranked: by sparsity, then best first
        if not view.sections or view.sections[-1]["sparsity"] != row["sparsity"]:
            view.sections.append({"sparsity": row["sparsity"], "rows": []})
        view.sections[-1]["rows"].append(row)
    return view


# ---- runs ---------------------------------------------------------------------------------------


def run_rows(store: Any) -> list[dict[str, Any]]:
    """Every run, newest first, as the runs table shows it."""
    rows = []
    for run in reversed(store.runs()):
        row = {key: run[key] for key in RUN_COLUMNS if key in run}
        rows.append(row | {"method": run["method_label"], "tags": ",".join(run["tags"])})
    return rows


def run_view(run: dict[str, Any]) -> dict[str, Any]:
    """A run (``method``: its full identity, ``method_label``: its name), per-tower and per-block sparsity."""
    return run | {
        "towers": grouped(run["allocation"], "tower"),
        "blocks": grouped(run["allocation"], "block"),
    }


def grouped(allocation: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per tower or block (in first-seen order): layers, parameters, weighted target and measured sparsity."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in allocation:
        groups[row[key] or row["layer"]].append(row)
    out = []
    for name, rows in groups.items():
        entry = {
            key: name,
            "tower": rows[0]["tower"],
            "layers": len(rows),
            "params": sum(r["params"] or 0 for r in rows),
        }
        out.append(entry | {part: weighted(rows, part) for part in ("target", "measured")})
    return out


def weighted(rows: list[dict[str, Any]], part: str) -> float | None:
    """The parameter-weighted mean of ``part`` (unknown sizes weigh 1)."""
    pairs = [(row[part], row["params"] or 1) for row in rows if row[part] is not None]
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total else None


# ---- comparison ---------------------------------------------------------------------------------


def comparison(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two runs: metric by metric (delta = b - a), their settings side by side, their sparsity per block."""
    names = SETTINGS + [f"method.{key}" for key in dict.fromkeys([*(a["method"] or {}), *(b["method"] or {})])]
    pairs = [(name, _setting(a, name), _setting(b, name)) for name in names]
    settings = [{"setting": name, "a": left, "b": right, "same": left == right} for name, left, right in pairs]
    blocks_a = {row["block"]: row for row in grouped(a["allocation"], "block")}
    blocks_b = {row["block"]: row for row in grouped(b["allocation"], "block")}
    blocks = [
        {"block": name, "tower": (blocks_a.get(name) or blocks_b[name])["tower"],
         "target_a": blocks_a.get(name, {}).get("target"), "target_b": blocks_b.get(name, {}).get("target"),
         "measured_a": blocks_a.get(name, {}).get("measured"), "measured_b": blocks_b.get(name, {}).get("measured")}
        for name in list(dict.fromkeys([*blocks_a, *blocks_b]))
    ]  # fmt: skip
    return {
        "a": {key: a[key] for key in ("id", "run_key", "model", "tags", "method_key")} | {"method": a["method_label"]},
        "b": {key: b[key] for key in ("id", "run_key", "model", "tags", "method_key")} | {"method": b["method_label"]},
        "metrics": compare_runs(a["metrics"], b["metrics"]),
        "settings": settings,
        "blocks": blocks,
    }


def _setting(run: dict[str, Any], name: str) -> Any:
    """A run's setting; ``method`` is its label, ``method.KEY`` one setting of its method."""
    if name == "method":
        return run["method_label"]
    if name.startswith("method."):
        return (run["method"] or {}).get(name.removeprefix("method."))
    return run.get(name)
