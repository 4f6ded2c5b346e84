"""Results documents (INTERFACES.md section 1) for the results-database tests."""

from __future__ import annotations

from typing import Any

DEFAULT_METHOD: dict[str, Any] = {
    "pruner": "wanda",
    "pruner_options": {"comparison": "auto"},
    "nm": None,
    "scorer": "zeroth-order",
    "scorer_options": {"zo_eps": 0.001, "zo_noise": 1, "zo_group": 1, "zo_level": "tensor"},
    "allocator": "ecoflap",
    "allocation_file": None,
    "granularity": "block",
    "aggregation": "sum",
    "max_sparsity": 0.6,
    "per_tower": False,
    "towers": [],
    "targets": [],
    "ignore": [],
    "calibration": {"corpus": "wikipedia", "nsamples": 32, "seqlen": 512, "score_nsamples": 8, "score_seqlen": 128,
                    "seed": 42},
}  # fmt: skip


def method(**changes: Any) -> dict[str, Any]:
    """The default job's method block (the schema of ``ecoflap.method``) with ``changes``."""
    return DEFAULT_METHOD | changes


def document(
    key: str,
    metrics: dict[str, dict[str, Any]] | None = None,
    *,
    model: str = "mini",
    dense: bool = False,
    pruner: str | None = "wanda",
    scorer: str | None = "zeroth-order",
    allocator: str | None = "ecoflap",
    sparsity: float = 0.5,
    layers: int = 3,
    writer: int = 0,
    method: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A document; ``metrics``: {task: {metric: value or (value, stderr)}}; acc is higher-, loss lower-is-better.

    ``method``: the ``ecoflap.method`` block (its names replace pruner, scorer and allocator); none: an older document.
    """
    metrics = metrics if metrics is not None else {"vqa": {"acc": (0.8, 0.01), "invalid_rate": 0.02}}
    results: dict[str, dict[str, Any]] = {}
    for task, values in metrics.items():
        results[task] = {"alias": task}
        for name, value in values.items():
            value, stderr = value if isinstance(value, tuple) else (value, "N/A")
            results[task] |= {f"{name},none": value, f"{name}_stderr,none": stderr}
    if method is not None:
        pruner, scorer, allocator = method["pruner"], method["scorer"], method["allocator"]
    if dense:
        pruner = scorer = allocator = method = None
        sparsity = 0.0
    doc = {
        "results": results,
        "configs": {task: {"task": task, "limit": None} for task in metrics},
        "versions": {task: "1.0" for task in metrics},
        "n-samples": {task: {"original": 100, "effective": 100} for task in metrics},
        "higher_is_better": {task: {m: not m.endswith(("rate", "loss")) for m in v} for task, v in metrics.items()},
        "config": {"model": model, "limit": None, "seed": 1234},
        "date": 1764345600.0,
        "git_hash": "5aae9fd",
        "ecoflap": {
            "run_key": key,
            "model": model,
            "model_hash": None,
            "checkpoint": None if dense else f"runs/{key}",
            "dense": dense,
            "pruner": pruner,
            "scorer": scorer,
            "allocator": allocator,
            "target_sparsity": sparsity,
            "measured_sparsity": sparsity - 0.001 if sparsity else 0.0,
            "allocation": [
                {
                    "layer": f"blocks.{i}.fc",
                    "tower": "text",
                    "block": f"blocks.{i}",
                    "target": sparsity,
                    "measured": sparsity,
                    "params": 1000 + writer,
                }
                for i in range(layers)
            ],  # fmt: skip
            "calibration": {"data": "toy", "nsamples": 4, "seqlen": 16},
            "seeds": {"calibration": 42, "eval": 1234},
            "versions": {"ecoflap": "0.1.0"},
            "timings_s": {"eval": 1.5},
            "peak_memory_mb": 12.5,
            "status": "complete",
        },
    }
    return doc | {"ecoflap": doc["ecoflap"] | {"method": method}} if method is not None else doc
