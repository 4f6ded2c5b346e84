"""``ecoflap prune``: the prune-and-evaluate job with the pruned model saved into the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ecoflap.core.errors import EcoflapError
from ecoflap.pipelines import common
from ecoflap.pipelines.common import GroupedCommand
from ecoflap.pipelines.run_cli import compared, execute, load_target, run_options

PRUNE_EXAMPLES = """
\b
Examples:
  ecoflap prune                                   # the embedded default job (mini-blip2, easy-vqa)
  ecoflap prune --model smollm2-135m              # a language model (held-out WikiText perplexity)
  ecoflap prune --towers language --pruner magnitude --allocator uniform
  ecoflap prune --pruner sparsegpt --allocator uniform --sparsity 0.6
  ecoflap prune --scorer first-order --sparsity 0.6 --max-sparsity 0.7 -o out/fo60
  ecoflap prune --allocator uniform --nm 2:4
  ecoflap prune --compare                         # beside uniform (same budget) and dense, side by side
  ecoflap prune --no-eval                         # prune and save only
  ecoflap prune -C run.yaml --seed 1              # flags override the file
\b
The same job as `ecoflap run` (the same Prefect flow, cache and results database); the pruned
model, allocation.json, report.json and results.json go to -o (default runs/NAME), and
`--model runs/NAME` reloads it.
"""


@click.command(cls=GroupedCommand, epilog=PRUNE_EXAMPLES)
@run_options
@click.option("--eval/--no-eval", "evaluate", default=True, help="evaluate the pruned model [eval]")
def prune(config_file: Path | None, strict: bool, cache: bool, compare: bool, evaluate: bool, **flags: Any) -> None:
    """Prune a model with ECoFLaP (or a baseline), save it, and report sparsity and its task metrics."""
    values = flags | {"refresh": None if cache else True, "save_model": True}
    if not evaluate:
        values["tasks"] = []  # given, so it overrides a config file's tasks
    target = load_target(config_file, values, ())
    if compare and not evaluate:
        raise EcoflapError("--compare compares evaluations: remove --no-eval")
    target = compared(target) if compare else target
    common.wanted_threads()  # a bad ECOFLAP_THREADS fails before anything is checked or written
    execute(target, strict)
