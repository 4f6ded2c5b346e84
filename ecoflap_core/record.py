"""The ``ecoflap`` block of a results document and its run key: one builder for eval, run, record and benchmarks.

A block says what was evaluated: the model and the hash of its dense weights, the checkpoint, the full
method identity (:meth:`PruneConfig.method`, with its ``method_key``), target and measured sparsity,
the per-layer allocation, the evaluation settings, seeds, versions, timings and peak memory. The run
key is a hash over what changes a number (model, weights, method, tasks, evaluation settings), so a
repeated run is recognised and runs whose settings differ are never merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecoflap.core.config import PruneConfig
from ecoflap.core.provenance import cache_key, git_hash, method_key, versions

BLOCK_VERSION = "ecoflap-block/v2"


def run_key(model: str, model_hash: str | None, method: Mapping[str, Any] | None, tasks: Sequence[str],
            evaluation: Mapping[str, Any]) -> str:  # fmt: skip
    """The idempotent key of one recorded run."""
    return cache_key("run/v2", model, model_hash, method_key(method), sorted(tasks), evaluation)


def evaluation_settings(limit: int | None, seed: int, task_args: Mapping[str, Any], data: Any = None) -> dict:
    """The evaluation settings that change a metric."""
    return {"limit": limit, "seed": seed, "task_args": dict(task_args), "data": data}


def results_block(
    *,
    model: str,
    model_hash: str | None,
    checkpoint: str | None,
    report: Mapping[str, Any] | None,
    allocation: list[dict[str, Any]],
    tasks: Sequence[str],
    evaluation: Mapping[str, Any],
    timings: Mapping[str, float],
    peak_memory_mb: float | None = None,
    steps: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``ecoflap`` block; ``report`` is the fine step's report.json (None: the dense model as loaded).
    ``steps``: each step's seconds, peak resident and peak device memory (``ecoflap.core.devices.StepMeasure``)."""
    config = PruneConfig(**({"device": "cpu"} | report["config"])) if report else None  # reports before devices: CPU
    method = config.method() if config else None
    return {
        "version": BLOCK_VERSION,
        "run_key": run_key(model, model_hash, method, tasks, evaluation),
        "model": model,
        "model_hash": model_hash,
        "checkpoint": checkpoint,
        "dense": config is None,
        "method": method,
        "method_key": method_key(method),
        "pruner": config.pruner if config else None,
        "scorer": method["scorer"] if method else None,
        "allocator": config.allocator if config else None,
        "target_sparsity": config.target if config else 0.0,
        "max_sparsity": config.cap if config else None,
        "measured_sparsity": report.get("measured_sparsity", 0.0) if report else 0.0,
        "allocation": allocation,
        "calibration": method["calibration"] if method else None,
        "evaluation": dict(evaluation),
        "seeds": _seeds(config, evaluation),
        "versions": versions(),
        "git_hash": git_hash(),
        "timings_s": dict(timings),
        "peak_memory_mb": peak_memory_mb,
        "steps": {name: dict(step) for name, step in (steps or {}).items()},
        "status": "complete",
        "artefacts": [{"kind": "checkpoint", "path": checkpoint}] if checkpoint else [],
    }


def _seeds(config: PruneConfig | None, evaluation: Mapping[str, Any]) -> dict[str, int]:
    seeds = {"eval": evaluation["seed"]}
    return seeds | ({"calibration": config.seed, "perturbation": config.seed} if config else {})


def allocation_rows(
    layers: Sequence[Mapping[str, Any]], targets: Mapping[str, float], measured: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One row per pruned layer: its tower, block, allocated and measured sparsity and its size."""
    return [
        {
            "layer": info["name"],
            "tower": info["tower"],
            "block": info["block"],
            "target": targets.get(info["name"]),
            "measured": measured.get(info["name"]),
            "params": info["size"],
        }
        for info in layers
        if info["name"] in targets
    ]
