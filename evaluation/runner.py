"""Run evaluation tasks on one model and write the results in lm-eval's JSON shape (plus an ``ecoflap`` block).

``evaluate`` checks every task name before any work, skips a task the model cannot do (with the
reason) and returns the document (its ``ecoflap`` block is the caller's, from ``ecoflap.core.record``;
results are cached by the Prefect tasks that call this); ``write_results`` writes it atomically;
``format_table`` renders lm-eval's terminal table under a one-line header of the run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecoflap.core.progress import terminal_bars
from ecoflap.core.provenance import git_hash, write_json
from ecoflap.core.tasks import Task, TaskOptions, TaskResult

SECTIONS = ("results", "configs", "versions", "n-samples", "n-shot", "higher_is_better", "skipped")
Log = Callable[[str], Any]


# --------------------------------------------------------------------------- running


def evaluate(
    adapter: Any,
    task_names: list[str],
    options: TaskOptions,
    registries: Any,
    log: Log | None = None,
) -> dict[str, Any]:
    """The results document of ``task_names`` on ``adapter`` (unknown task names fail before any work)."""
    tasks = {name: registries.tasks.get(name) for name in dict.fromkeys(task_names)}
    document: dict[str, Any] = {section: {} for section in SECTIONS}
    for name, task_cls in tasks.items():
        reason = task_cls.skip_reason(adapter)
        if reason is None:
            result, reason = run_task(task_cls, adapter, task_options(options, name), log)
        if reason is not None:
            document["skipped"][name] = reason
            _say(log, f"{name}: skipped ({reason})")
            continue
        add_result(document, task_cls, result, task_options(options, name))
    document["config"] = {
        "model": str(getattr(adapter, "model_id", type(adapter).__name__)),
        "limit": options.limit,
        "seed": options.seed,
        "task_args": dict(options.extra),
    }
    document["date"] = time.time()
    document["git_hash"] = git_hash()
    return document


def task_options(options: TaskOptions, task: str) -> TaskOptions:
    """The options one task sees: ``task.key=value`` arguments for it only, ``key=value`` for every task,
    and ``--data-dir D`` as ``D/<task>`` when that folder exists."""
    extra = {k: v for k, v in options.extra.items() if "." not in k}
    extra |= {k.split(".", 1)[1]: v for k, v in options.extra.items() if k.startswith(f"{task}.")}
    data_dir = options.data_dir
    if data_dir is not None and (Path(data_dir) / task).is_dir():
        data_dir = Path(data_dir) / task
    return dataclasses.replace(options, extra=extra, data_dir=data_dir)


def run_task(
    task_cls: type[Task], adapter: Any, options: TaskOptions, log: Log | None
) -> tuple[TaskResult | None, str | None]:
    """(result, None), or (None, reason) when the task finds it cannot run this model on this data."""
    from ecoflap.evaluation.tasks.base import TaskSkipped

    _say(log, f"{task_cls.name}: running on {getattr(adapter, 'model_id', type(adapter).__name__)}")
    try:
        return task_cls().run(adapter, with_terminal_bar(options)), None
    except TaskSkipped as exc:
        return None, str(exc)


def with_terminal_bar(options: TaskOptions) -> TaskOptions:
    """The options a task runs with: every progress bar it opens is drawn on the terminal too."""
    return dataclasses.replace(options, progress=terminal_bars(options.progress))


# --------------------------------------------------------------------------- the document


def add_result(document: dict[str, Any], task_cls: type[Task], result: TaskResult, options: TaskOptions) -> None:
    """One task's sections in lm-eval's shape; MMLU-style ``subtasks`` become indented sub-task rows."""
    name = task_cls.name
    config = dict(result.config)
    subtasks = config.pop("subtasks", None) or {}
    document["results"][name] = {"alias": name} | _metric_values(result.metrics, result.stderr)
    document["configs"][name] = {"task": name, "version": result.version, "limit": options.limit,
                                 "seed": options.seed, "task_args": dict(options.extra)} | config  # fmt: skip
    if result.notes:
        document["configs"][name]["notes"] = list(result.notes)
    document["versions"][name] = result.version
    original = int(config.get("n_original", result.n_samples))
    document["n-samples"][name] = {"original": original, "effective": result.n_samples}
    document["n-shot"][name] = int(config.get("num_fewshot", 0))
    document["higher_is_better"][name] = {m.name: m.higher_is_better for m in task_cls.metrics}
    for sub, values in subtasks.items():
        key = f"{name}_{sub}"
        document["results"][key] = {"alias": sub} | _metric_values(
            {"acc": values["acc"]}, {"acc": values.get("acc_stderr")}
        )
        document["versions"][key] = result.version
        document["n-samples"][key] = {"original": values["n"], "effective": values["n"]}
        document["n-shot"][key] = values.get("n-shot", 0)
        document["higher_is_better"][key] = {"acc": True}
    if subtasks:
        document.setdefault("group_subtasks", {})[name] = [f"{name}_{sub}" for sub in subtasks]


def _metric_values(metrics: dict[str, float], stderr: dict[str, float | None]) -> dict[str, Any]:
    """``"<metric>,none"`` and ``"<metric>_stderr,none"``; a missing value (NaN, None) is ``"N/A"``."""
    values: dict[str, Any] = {}
    for metric, value in metrics.items():
        values[f"{metric},none"] = _number(value)
        values[f"{metric}_stderr,none"] = _number(stderr.get(metric))
    return values


def _number(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    return float(value)


def merge_documents(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One lm-eval-shaped document from one document per task (their per-task sections joined)."""
    merged: dict[str, Any] = {section: {} for section in SECTIONS}
    for document in documents:
        for section, value in document.items():
            if section in SECTIONS and isinstance(value, dict):
                merged[section] |= value
            elif section not in merged:
                merged[section] = value
    return merged


# --------------------------------------------------------------------------- output


def write_results(document: dict[str, Any], output: Path, echo: Log | None = None) -> Path:
    """``output/results.json`` written atomically (an earlier file stays whole until replaced)."""
    path = Path(output) / "results.json"
    write_json(path, document)
    if echo is not None:
        echo(format_table(document))
    return path


def format_table(document: dict[str, Any]) -> str:
    """lm-eval's markdown table of the results, under a header line and above the skipped tasks."""
    from lm_eval.utils import make_table

    config = document.get("config", {})
    block = document.get("ecoflap", {})
    sparsity = "dense" if block.get("dense", True) else f"sparsity {block.get('measured_sparsity')}"
    header = (
        f"{config.get('model')} ({config.get('checkpoint') or 'as loaded'}, {sparsity}), "
        f"limit: {config.get('limit')}, seed: {config.get('seed')}"
    )
    table = make_table(document) if document.get("results") else "(no task results)\n"
    skipped = "".join(f"skipped {task}: {reason}\n" for task, reason in document.get("skipped", {}).items())
    return f"{header}\n{table}{skipped}".rstrip("\n")


def _say(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


def tower_sparsity(allocation: list[dict[str, Any]]) -> dict[str, float]:
    """Measured sparsity of each tower of a results block's allocation, weighted by the layers' parameters."""
    zeros: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for layer in allocation:
        tower, params = layer.get("tower") or "-", layer.get("params") or 0
        zeros[tower] = zeros.get(tower, 0.0) + (layer.get("measured") or 0.0) * params
        sizes[tower] = sizes.get(tower, 0) + params
    return {tower: zeros[tower] / sizes[tower] for tower in sizes if sizes[tower]}


def comparison_table(documents: list[dict[str, Any]]) -> str:
    """Runs side by side (a sweep, ``--compare``): method, measured sparsity overall and per tower, and each
    task's metrics with their standard errors, in the order given."""
    from ecoflap.evaluation.results.method import method_label

    metrics = list(dict.fromkeys((task, name.split(",")[0]) for d in documents for task, values in d["results"].items()
                                 for name in values if "," in name and "_stderr" not in name))  # fmt: skip
    header = ["method", "sparsity", "per tower"] + [f"{task} {name}" for task, name in metrics]
    rows = [header, ["---"] * len(header)]
    for document in documents:
        block = document["ecoflap"]
        towers = tower_sparsity(block.get("allocation") or [])
        dense = block.get("dense", True)
        row = ["dense" if dense else method_label(block.get("method"), block.get("target_sparsity")),
               "0" if dense else f"{block['measured_sparsity']:.4f}",
               " / ".join(f"{t} {s:.3f}" for t, s in towers.items()) or "-"]  # fmt: skip
        for task, name in metrics:
            values = document["results"].get(task, {})
            value, err = values.get(f"{name},none"), values.get(f"{name}_stderr,none")
            number = isinstance(value, (int, float)) and math.isfinite(value)
            spread = f" ± {err:.3f}" if isinstance(err, (int, float)) and math.isfinite(err) else ""
            row.append(f"{value:.4g}{spread}" if number else "-")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
