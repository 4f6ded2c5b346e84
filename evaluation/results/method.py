"""The method identity of a run (``ecoflap.method`` of a results document): its key, its columns and its label.

One label builder for the CLI, the export and the dashboard: the pruner and allocator always, every other
setting only where it differs from the default job (``wanda 2:4 / uniform``, ``wanda / ecoflap zeroth-order
cap 0.7``). Documents written before the method block have only ``pruner``, ``scorer`` and ``allocator``:
their identity holds those and leaves every other setting None (unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecoflap.core.provenance import SCORER_DEFAULTS, ZO_KEYS_BEFORE, ZO_SMOOTH_BLOCKS, method_key

SPARSITY_DIGITS = 6  # target sparsities equal to this many digits are the same sparsity
CAP_STEP = 0.1  # the default cap is the target + 0.1 (the paper's p_max)
FIELDS = (
    "pruner", "pruner_options", "nm", "scorer", "scorer_options", "allocator", "allocation_file", "granularity",
    "aggregation", "max_sparsity", "per_tower", "towers", "targets", "ignore", "calibration",
)  # fmt: skip
# The default job's settings: a label leaves these out.
DEFAULTS: dict[str, Any] = {
    "pruner_options": {"comparison": "auto"},
    "scorer_options": SCORER_DEFAULTS,
    "granularity": "block",
    "aggregation": "sum",
    "per_tower": False,
    "dtype": "float32",
    "calibration": {"corpus": "wikipedia", "nsamples": 32, "seqlen": 512, "score_nsamples": 8, "score_seqlen": 128,
                    "seed": 42},
}  # fmt: skip
# Settings with a real column in the runs table (what leaderboard queries filter or group by).
COLUMNS = ("nm", "max_sparsity", "granularity", "aggregation", "per_tower")
SPARSITY_KEYS = ("target_sparsity",)  # what a method block may hold besides the method: not part of a series


def legacy_method(pruner: str | None, scorer: str | None, allocator: str | None) -> dict[str, Any]:
    """The identity of a run recorded before the method block: the three names, every other setting unknown."""
    return {name: None for name in FIELDS} | {"pruner": pruner, "scorer": scorer, "allocator": allocator}


def series_key(method: Mapping[str, Any] | None) -> str | None:
    """The key of the method without its target sparsity: one curve against sparsity."""
    if method is None:
        return None
    rest = {k: v for k, v in method.items() if k not in SPARSITY_KEYS}
    target, cap = method.get("target_sparsity"), rest.get("max_sparsity")
    if (
        target is not None
        and cap is not None
        and round(cap, SPARSITY_DIGITS) == round(target + CAP_STEP, SPARSITY_DIGITS)
    ):
        rest["max_sparsity"] = "target + 0.1"  # the default cap moves with the sparsity: one curve
    return method_key(rest)


def method_columns(method: Mapping[str, Any] | None) -> dict[str, Any]:
    """The runs table's real columns of a method (None where unknown or dense)."""
    return {name: (method or {}).get(name) for name in COLUMNS}


def method_label(method: Mapping[str, Any] | None, target: float | None = None) -> str:
    """``pruner[ N:M] / allocator[ scorer][ settings]``; ``dense`` for a dense run (``target``: the default cap)."""
    if method is None:
        return "dense"
    left = [method.get("pruner") or "-", method.get("nm"), *_options(method, "pruner_options")]
    right = [method.get("allocator") or "-", method.get("scorer"), *_options(_zo_filled(method), "scorer_options")]
    right += _allocator_options(method) + _allocation_settings(method, target) + _calibration(method)
    right += [f"{k}={_short(v)}" for k, v in sorted(method.items()) if _extra(k) and v and DEFAULTS.get(k) != v]
    return " ".join(filter(None, left)) + " / " + " ".join(filter(None, right))


def _extra(name: str) -> bool:
    """A key of a method block beyond the fields above (a newer writer's setting): shown as ``key=value``."""
    return name not in FIELDS and name not in SPARSITY_KEYS and name != "allocator_options"


def _allocation_settings(method: Mapping[str, Any], target: float | None) -> list[str]:
    words = [method.get("granularity"), method.get("aggregation")]
    words = [w for w, name in zip(words, ("granularity", "aggregation"), strict=True) if w != DEFAULTS[name]]
    cap = method.get("max_sparsity")
    if cap is not None and (target is None or round(cap, SPARSITY_DIGITS) != round(target + CAP_STEP, SPARSITY_DIGITS)):
        words.append(f"cap {cap:g}")
    words += ["per-tower"] if method.get("per_tower") else []
    words += [f"{name} {','.join(method[name])}" for name in ("towers", "targets", "ignore") if method.get(name)]
    file = method.get("allocation_file")
    return words + ([f"file {_short(file)}"] if file else [])


def _zeroth_order_block(method: Mapping[str, Any]) -> bool:
    """A zeroth-order run with a method block (a document from before the block knows none of its settings)."""
    return method.get("scorer") == "zeroth-order" and "zo_level" in (method.get("scorer_options") or {})


def _zo_filled(method: Mapping[str, Any]) -> Mapping[str, Any]:
    """A zeroth-order run's options with the settings added later filled in with the value it used."""
    if not _zeroth_order_block(method):
        return method
    return {**method, "scorer_options": ZO_KEYS_BEFORE | method["scorer_options"]}


def _allocator_options(method: Mapping[str, Any]) -> list[str]:
    """``key=value`` for owl's lambda, dlp's alpha, and ecoflap's smoothing where it is not zeroth-order's default
    (a zeroth-order run recorded before the smoothing has none: it used 1)."""
    options, defaults = dict(method.get("allocator_options") or {}), {}
    if method.get("allocator") == "ecoflap" and _zeroth_order_block(method):
        options, defaults = {"smooth_blocks": 1} | options, {"smooth_blocks": ZO_SMOOTH_BLOCKS}
    return [f"{k}={_short(v)}" for k, v in sorted(options.items()) if defaults.get(k, object()) != v]


def _options(method: Mapping[str, Any], name: str) -> list[str]:
    """``key=value`` for each option of ``method[name]`` that differs from the default."""
    defaults = DEFAULTS[name]
    return [f"{k}={_short(v)}" for k, v in sorted((method.get(name) or {}).items()) if defaults.get(k, object()) != v]


def _calibration(method: Mapping[str, Any]) -> list[str]:
    changed = _options(method, "calibration")
    return ["calibration " + " ".join(changed)] if changed else []


def _short(value: Any) -> str:
    """A value for a label: ``path@sha256`` -> ``name@12 hex``; lists comma-joined."""
    if isinstance(value, list):
        return ",".join(map(_short, value))
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    path, at, digest = text.rpartition("@")
    return f"{path.rsplit('/', 1)[-1]}@{digest[:12]}" if at and len(digest) >= 32 else text


def method_of(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A run's or leaderboard entry's identity: its ``method`` block, else derived from the flat names."""
    if run.get("dense"):
        return None
    method = run.get("method")
    if isinstance(method, Mapping):
        return dict(method)
    return legacy_method(run.get("pruner"), run.get("scorer"), run.get("allocator"))


def run_label(run: Mapping[str, Any]) -> str:
    """The method label of a run dict or leaderboard entry."""
    return method_label(method_of(run), run.get("target_sparsity"))
