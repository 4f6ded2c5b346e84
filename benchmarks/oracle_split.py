"""Where the budget should go on mini-blip2: a measured oracle of the vision / language split.

For each global budget (share of the prunable parameters of both towers) and each vision sparsity v,
the language sparsity is the one that meets the budget exactly, l = (B * N - v * N_vision) / N_language;
every point is one run of the job with a ``from-file`` allocation (uniform within each tower) and the
same Wanda fine step, evaluated by VQA generation and ranking. The best split of each budget on the
validation questions is the oracle; its test accuracy is reported once, beside the splits that ECoFLaP's
scorers choose at the same budget (their allocation, their fine step, their evaluation).

Settings are chosen on ``split=validation`` (1,000 seeded easy-vqa train questions, never test); the
test split answers only for the oracle's choice and the scorers' runs.

    python benchmarks/oracle_split.py [--budgets 0.3 0.4] [--vision 0 0.2 0.4 ... 0.8] [--questions 300]
    python benchmarks/oracle_split.py --table        # the table and benchmarks/results/oracle_split.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from job_table import RESULTS, Table, metric, table_arguments

from ecoflap.core.config import PruneConfig
from ecoflap.core.job import load_model
from ecoflap.pipelines.common import registries
from ecoflap.pipelines.run_cli import prefect_defaults

#: every scorer row names all of its zeroth-order settings, so that no row depends on the code's defaults
SAMPLED_SMOOTH5 = {"zo_level": "sampled", "zo_difference": "forward", "smooth_blocks": 5}
SCORERS = {
    "ecoflap zeroth-order grad-only, exact (the reference's)": {
        "allocator": "ecoflap", "scorer": "zeroth-order", "zo_variant": "grad-only", "zo_level": "tensor",
        "zo_difference": "central", "smooth_blocks": 1,
    },
    "ecoflap zeroth-order grad-mag-abs": {
        "allocator": "ecoflap", "scorer": "zeroth-order", "zo_variant": "grad-mag-abs", **SAMPLED_SMOOTH5,
    },
    "ecoflap zeroth-order weight-scaled (default)": {
        "allocator": "ecoflap", "scorer": "zeroth-order", "zo_variant": "weight-scaled", **SAMPLED_SMOOTH5,
    },
    "ecoflap first-order": {"allocator": "ecoflap", "scorer": "first-order"},
    "uniform": {"allocator": "uniform"},
}  # fmt: skip


def tower_sizes(model: str) -> dict[str, dict[str, int]]:
    """``{tower: {layer: parameters}}`` of the model's prunable layers."""
    adapter = load_model(registries(False), PruneConfig(model=model))
    sizes: dict[str, dict[str, int]] = {}
    for name, layer in adapter.prunable_layers().items():
        sizes.setdefault(name.split(".", 1)[0], {})[name] = layer.weight.numel()
    return sizes


def language_sparsity(budget: float, vision: float, sizes: dict[str, dict[str, int]]) -> float | None:
    """The language sparsity that meets ``budget`` with the vision tower at ``vision`` (None: out of range)."""
    n_vision, n_language = sum(sizes["vision"].values()), sum(sizes["language"].values())
    value = (budget * (n_vision + n_language) - vision * n_vision) / n_language
    return round(value, 4) if 0.0 <= value < 1.0 else None


def tower_split_file(folder: Path, sizes: dict[str, dict[str, int]], split: dict[str, float]) -> Path:
    """A ``from-file`` allocation: every layer of a tower at that tower's sparsity."""
    table = {layer: split[tower] for tower, layers in sizes.items() for layer in layers}
    return allocation_file(folder, f"split_v{split['vision']:.3f}_l{split['language']:.4f}", table)


def allocation_file(folder: Path, name: str, table: dict[str, float]) -> Path:
    """A ``from-file`` allocation (``{layer: sparsity}``) as ``folder/name.json``."""
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=0, sort_keys=True))
    return path


def oracle(rows: list[dict[str, Any]], budget: float, name: str = "acc") -> dict[str, Any] | None:
    """The grid row of ``budget`` with the best validation accuracy (ties: the larger ranking accuracy)."""
    grid = [r for r in rows if r["kind"] == "grid" and r["budget"] == budget and r["split"] == "validation"]
    return max(grid, key=lambda r: (metric(r, "vqa", name), metric(r, "vqa", "rank_acc")), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.4])
    parser.add_argument("--vision", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--pruner", default="wanda")
    parser.add_argument("--scorers", nargs="*", default=list(SCORERS), choices=list(SCORERS))
    parser.add_argument("--model", default="mini-blip2")
    table_arguments(parser, RESULTS / "oracle_split.json", "print the finished rows and draw the figure")
    args = parser.parse_args()
    table = Table(args.output, args.fresh)
    if not args.table:
        run_grid(table, args)
    print(markdown(table.rows, args.budgets))
    if table.rows:
        print(f"figure: {figure(table.rows, args.budgets, args.output.with_suffix('.png'))}")


def run_grid(table: Table, args: argparse.Namespace) -> None:
    prefect_defaults()
    sizes = tower_sizes(args.model)
    base = {"model": args.model, "pruner": args.pruner, "tasks": ["vqa"], "limit": args.questions, "record": False}
    folder = Path("runs") / "bench-oracle-split"

    def run(label: str, settings: dict[str, Any], split: str, extra: dict[str, Any]) -> None:
        fields = base | settings | {"task_args": {"split": split}}
        table.run_row(f"{label} [{split}]", fields, folder, extra | {"split": split})

    for budget in args.budgets:
        for vision in args.vision:
            language = language_sparsity(budget, vision, sizes)
            if language is None:
                continue
            split = {"vision": vision, "language": language}
            path = tower_split_file(folder / "allocations", sizes, split)
            settings = {"allocator": "from-file", "allocation_file": str(path.resolve()), "sparsity": budget}
            extra = {"kind": "grid", "budget": budget} | split
            run(f"grid B={budget} v={vision:.2f} l={language:.3f}", settings, "validation", extra)
        for name in args.scorers:
            for split in ("validation", "test"):
                run(f"{name} B={budget}", SCORERS[name] | {"sparsity": budget}, split, {"kind": name, "budget": budget})
        best = oracle(table.rows, budget)
        if best is not None:
            path = tower_split_file(folder / "allocations", sizes, {t: best[t] for t in ("vision", "language")})
            settings = {"allocator": "from-file", "allocation_file": str(path.resolve()), "sparsity": budget}
            run(f"oracle B={budget}", settings, "test", {"kind": "oracle", "budget": budget} | {
                t: best[t] for t in ("vision", "language")})  # fmt: skip


def markdown(rows: list[dict[str, Any]], budgets: list[float]) -> str:
    """Per budget: the grid on validation, then the oracle's and each scorer's split with test accuracy."""
    lines = []
    for budget in budgets:
        lines += [
            f"\nBudget {budget:.0%}",
            "",
            "| run | vision / language | VQA generate | VQA rank |",
            "|---|---|---|---|",
        ]
        for r in sorted(
            (r for r in rows if r.get("budget") == budget), key=lambda r: (r["split"], r.get("vision", -1))
        ):
            towers = r["per_tower"]
            lines.append(
                f"| {r['label']} | {towers.get('vision', 0):.3f} / {towers.get('language', 0):.3f} | "
                f"{metric(r, 'vqa', 'acc'):.3f} ± {stderr(r, 'acc'):.3f} | {metric(r, 'vqa', 'rank_acc'):.3f} |"
            )
    return "\n".join(lines)


MARKERS = {"ecoflap zeroth-order grad-only, exact (the reference's)": ("v", "tab:red"),
           "ecoflap zeroth-order grad-mag-abs": ("D", "tab:orange"),
           "ecoflap zeroth-order weight-scaled (default)": ("P", "tab:purple"),
           "ecoflap first-order": ("^", "tab:green"),
           "uniform": ("s", "tab:gray"), "oracle": ("*", "tab:blue")}  # fmt: skip


def figure(rows: list[dict[str, Any]], budgets: list[float], path: Path) -> Path:
    """Validation accuracy along each budget's line of splits, with the split each scorer chose (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(budgets), figsize=(5.2 * len(budgets), 4.4), sharey=True, squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        grid = sorted((r for r in rows if r.get("kind") == "grid" and r["budget"] == budget), key=lambda r: r["vision"])
        xs = [r["per_tower"]["vision"] for r in grid]
        ax.plot(xs, [metric(r, "vqa", "acc") for r in grid], "o-", color="tab:blue", label="uniform within towers")
        ax.plot(xs, [metric(r, "vqa", "rank_acc") for r in grid], "o:", color="tab:blue", alpha=0.5, label="(ranking)")
        for r in rows:
            if r.get("budget") == budget and r.get("kind") in MARKERS and r["split"] == "validation":
                marker, colour = MARKERS[r["kind"]]
                ax.plot(r["per_tower"]["vision"], metric(r, "vqa", "acc"), marker, color=colour, markersize=10,
                        label=r["kind"])  # fmt: skip
        ax.set_title(f"mini-blip2, {budget:.0%} of both towers' weights pruned")
        ax.set_xlabel("vision tower sparsity (language: the rest of the budget)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("VQA accuracy, validation (generation)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)  # below the panels, on no data
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stderr(row: dict[str, Any], name: str) -> float:
    value = row["results"]["vqa"].get(f"{name}_stderr,none", "N/A")
    return float("nan") if value == "N/A" else float(value)


if __name__ == "__main__":
    main()
