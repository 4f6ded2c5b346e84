"""Run evaluation tasks on one model and write the results in lm-eval's JSON shape (plus an ``ecoflap`` block).

``evaluate`` checks every task name before any work, skips a task the model cannot do (with the
reason), reuses a task result already computed for the same model, checkpoint and settings (when
given a cache folder), and returns the document; ``write_results`` writes it atomically;
``format_table`` renders lm-eval's terminal table under a one-line header of the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import Task, TaskOptions, TaskResult

RESULT_CACHE_VERSION = "eval-task/v1"
SECTIONS = ("results", "configs", "versions", "n-samples", "n-shot", "higher_is_better", "skipped")
Log = Callable[[str], Any]


# --------------------------------------------------------------------------- running


def evaluate(
    adapter: Any,
    task_names: list[str],
    options: TaskOptions,
    registries: Any,
    ecoflap_block: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The results document of ``task_names`` on ``adapter`` (unknown task names fail before any work)."""
    tasks = {name: registries.tasks.get(name) for name in dict.fromkeys(task_names)}
    document: dict[str, Any] = {section: {} for section in SECTIONS}
    identity = model_identity(adapter, ecoflap_block)
    start = time.perf_counter()
    for name, task_cls in tasks.items():
        reason = task_cls.skip_reason(adapter)
        if reason is None:
            result, reason = run_task(task_cls, adapter, task_options(options, name), identity, cache_dir, log)
        if reason is not None:
            document["skipped"][name] = reason
            _say(log, f"{name}: skipped ({reason})")
            continue
        add_result(document, task_cls, result, task_options(options, name))
    document["config"] = {
        "model": identity["model"],
        "checkpoint": identity["checkpoint"],
        "limit": options.limit,
        "seed": options.seed,
        "task_args": dict(options.extra),
    }
    document["date"] = time.time()
    document["git_hash"] = git_hash()
    document["ecoflap"] = _block(ecoflap_block, identity, document, time.perf_counter() - start)
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
    task_cls: type[Task], adapter: Any, options: TaskOptions, identity: dict[str, Any], cache_dir: Path | None,
    log: Log | None,
) -> tuple[TaskResult | None, str | None]:  # fmt: skip
    """(result, None), or (None, reason) when the task finds it cannot run this model on this data."""
    from ecoflap.evaluation.tasks.base import TaskSkipped

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{result_key(task_cls, options, identity)}.json"
        cached = _read_cached(path)
        if cached is not None:
            _say(log, f"{task_cls.name}: reused the result computed earlier ({path})")
            return cached, None
    _say(log, f"{task_cls.name}: running on {identity['model']}")
    try:
        result = task_cls().run(adapter, options)
    except TaskSkipped as exc:
        return None, str(exc)
    if path is not None:
        write_json_atomically(path, dataclasses.asdict(result))
    return result, None


def result_key(task_cls: type[Task], options: TaskOptions, identity: dict[str, Any]) -> str:
    """sha256 over the model identity, the task and its version, the data and every setting."""
    parts = [
        RESULT_CACHE_VERSION,
        {k: identity[k] for k in ("model", "model_hash", "checkpoint")},
        task_cls.name,
        task_cls.version,
        data_fingerprint(options.data_dir),
        options.limit,
        options.seed,
        sorted(options.extra.items()),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(folder: Path | None) -> Any:
    """A data folder's resolved path and its top-level files' names, sizes and modification times."""
    if folder is None:
        return None
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        return [str(path), _stat(path)]
    return [str(path), sorted((p.name, _stat(p)) for p in path.iterdir() if p.is_file())]


def _stat(path: Path) -> Any:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_cached(path: Path) -> TaskResult | None:
    try:
        return TaskResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent or damaged: computed again


def model_identity(adapter: Any, block: dict[str, Any] | None) -> dict[str, Any]:
    """Model name, weights hash and checkpoint (from the ``ecoflap`` block where it has them)."""
    block = block or {}
    model = block.get("model") or str(getattr(adapter, "model_id", type(adapter).__name__))
    model_hash = block.get("model_hash")
    if model_hash is None and hasattr(adapter, "model"):
        model_hash = weights_hash(adapter.model)
    return {"model": model, "model_hash": model_hash, "checkpoint": block.get("checkpoint")}


def weights_hash(model: Any) -> str | None:
    """sha256 over every tensor of the state dict (the same digest as the run pipeline's)."""
    state_dict = getattr(model, "state_dict", None)
    if state_dict is None:
        return None
    from ecoflap.pipelines.steps import weights_hash as digest  # one definition of the model identity

    return digest(model)


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


def _block(block: dict[str, Any] | None, identity: dict[str, Any], document: dict[str, Any], seconds: float) -> dict:
    """The caller's ``ecoflap`` block, or that of a dense model evaluated as loaded."""
    from ecoflap.pipelines.prune import versions

    settings = [identity, sorted(document["results"]), document["config"]]
    base = {
        "run_key": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
        "model": identity["model"], "model_hash": identity["model_hash"], "checkpoint": identity["checkpoint"],
        "dense": True, "pruner": None, "scorer": None, "allocator": None,
        "target_sparsity": 0.0, "measured_sparsity": 0.0, "allocation": [], "calibration": None,
        "seeds": {"eval": document["config"]["seed"]}, "versions": versions(),
        "timings_s": {"eval": round(seconds, 3)}, "status": "complete",
    }  # fmt: skip
    merged = base | (block or {})
    merged["timings_s"] = dict(merged.get("timings_s") or {}) | {"eval": round(seconds, 3)}
    return merged


def git_hash() -> str | None:
    """The short commit of the ecoflap source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------- output


def write_json_atomically(path: Path, data: Any) -> None:
    """JSON through a temporary file and a rename: a reader sees the old file or the whole new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str)
        os.replace(tmp, path)
    except OSError as exc:
        raise EcoflapError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)


def write_results(document: dict[str, Any], output: Path, echo: Log | None = None) -> Path:
    """``output/results.json`` written atomically (an earlier file stays whole until replaced)."""
    path = Path(output) / "results.json"
    write_json_atomically(path, document)
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
