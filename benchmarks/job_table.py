"""Benchmark tables through the one job: every row is one run of the prune-and-evaluate flow.

The benchmarks do not re-assemble the method: each row is a :class:`RunConfig` run by
``ecoflap.pipelines.flows.run_flow`` (Prefect caches its steps, so rows that share coarse scores or an
allocation compute them once), and the row keeps what the run's results.json says: run key, method
identity, measured sparsity per tower, metrics and timings. The table file records the git hash and the
command that produced it; a rerun from another code version stops with one line instead of mixing rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from ecoflap.core.provenance import git_hash, read_json, write_json
from ecoflap.evaluation.results.method import method_label
from ecoflap.evaluation.runner import tower_sparsity
from ecoflap.pipelines.run_config import RunConfig

RESULTS = Path(__file__).parent / "results"


def table_arguments(
    parser: argparse.ArgumentParser, output: Path | None, table: str = "print the finished rows"
) -> None:
    """The options of every table benchmark: its file, a fresh start, and printing without running."""
    shown = f"benchmarks/results/{output.name if output else '<benchmark>_<stage>.json'}"
    parser.add_argument("-o", "--output", type=Path, default=output, help=f"[{shown}]")
    parser.add_argument("--fresh", action="store_true", help="start a new table (rows of another code version)")
    parser.add_argument("--table", action="store_true", help=table)


class Table:
    """The rows of one benchmark file, resumable, all from one code version."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.version = git_hash()
        saved = read_json(path) if path.is_file() and not fresh else {}
        self.other_version = path.is_file() and not fresh and saved.get("git_hash") != self.version
        self.saved_version = saved.get("git_hash")
        self.rows: list[dict[str, Any]] = saved.get("rows", [])
        self.command = shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])

    def has(self, label: str) -> bool:
        return any(row["label"] == label for row in self.rows)

    def run(self, label: str, config: RunConfig) -> dict[str, Any]:
        """Run the job for one row (unless the table has it) and save the table."""
        if not self.has(label):
            from ecoflap.pipelines.flows import run_flow

            if self.other_version:
                sys.exit(
                    f"Error: {self.path} holds rows of code version {self.saved_version or 'unknown'}, this is "
                    f"{self.version}: rerun with --fresh (or another output file) so that versions never mix"
                )
            summary = run_flow(config)
            self.rows.append(row(label, read_json(summary["results"])))
            self.save()
        return next(r for r in self.rows if r["label"] == label)

    def run_row(self, label: str, fields: dict[str, Any], folder: Path, extra: dict[str, Any] | None = None) -> dict:
        """One row of a benchmark: the job on ``fields`` (RunConfig's), its output in ``folder``/``label``, the
        row's own keys (``extra``: budget, seed, ...) saved with it, and its summary printed."""
        config = RunConfig.build(**fields | {"output": str(folder / slug(label))})
        done = self.run(label, config)
        if extra:
            done.update(extra)
            self.save()
        print(f"{label}: {summary(done)}", flush=True)
        return done

    def save(self) -> None:
        write_json(self.path, {"git_hash": self.version, "command": self.command, "rows": self.rows})


def slug(label: str) -> str:
    """A row's output folder name: its label without spaces."""
    return label.replace(" ", "_").replace("@", "at")


def row(label: str, document: dict[str, Any]) -> dict[str, Any]:
    """One table row from a run's results document."""
    block = document["ecoflap"]
    return {
        "label": label,
        "method": method_label(block.get("method")) if block.get("method") else "dense",
        "run_key": block["run_key"],
        "method_key": block.get("method_key"),
        "target_sparsity": block["target_sparsity"],
        "measured_sparsity": block["measured_sparsity"],
        "per_tower": per_tower(block["allocation"]),
        "results": document["results"],
        "timings_s": block["timings_s"],
        "git_hash": block.get("git_hash"),
        "versions": block.get("versions"),  # the machine too: the same run key elsewhere may differ
        # torch's threads in each step: a step reused from the cache may have run at another count than the run
        "step_threads": {name: step["threads"] for name, step in block.get("steps", {}).items() if step.get("threads")},
    }


def per_tower(allocation: list[dict[str, Any]]) -> dict[str, float]:
    """Measured sparsity of each tower, weighted by parameters (the comparison table's own helper)."""
    return tower_sparsity(allocation)


def summary(row_: dict[str, Any]) -> str:
    """One line: the tower split where the model has towers, then the VQA or WikiText figures."""
    towers = row_["per_tower"]
    split = f"vision {towers['vision']:.3f} / language {towers['language']:.3f}, " if "vision" in towers else ""
    if "vqa" in row_["results"]:
        return f"{split}VQA generate {metric(row_, 'vqa', 'acc'):.3f}, rank {metric(row_, 'vqa', 'rank_acc'):.3f}"
    word, token = metric(row_, "wikitext", "word_perplexity"), metric(row_, "wikitext", "token_perplexity")
    return f"{split}word ppl {word:.2f}, token ppl {token:.2f}"


def wilson(row_: dict[str, Any]) -> tuple[float, float]:
    """95% Wilson interval of a row's VQA generation accuracy over its ``questions``."""
    n = row_["questions"]
    k = round(metric(row_, "vqa", "acc") * n)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def metric(row_: dict[str, Any], task: str, name: str) -> float:
    value = row_["results"][task][f"{name},none"]
    return float("nan") if value == "N/A" else float(value)
