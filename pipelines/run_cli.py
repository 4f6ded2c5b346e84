"""``ecoflap run``: the prune-and-evaluate flow, or a sweep of it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import yaml

from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import read_json
from ecoflap.evaluation.runner import comparison_table, format_table
from ecoflap.pipelines import common
from ecoflap.pipelines.common import GroupedCommand, config_options
from ecoflap.pipelines.run_config import SWEEP_KEYS, RunConfig, SweepConfig, build_sweep

RUN_EXAMPLES = """
\b
Examples:
  ecoflap run                                     # mini-blip2, ECoFLaP + Wanda at 50%, easy-vqa
  ecoflap run --model smollm2-135m --allocator uniform --limit 8
  ecoflap run -C run.yaml --seed 1                # flags override the file
  ecoflap run --grid sparsity=0.5,0.6 --grid pruner=wanda,sparsegpt --parallel 2
  PREFECT_API_URL=http://127.0.0.1:4200/api ecoflap run -C run.yaml   # against a Prefect server
  ecoflap run --grid sparsity=0.4,0.6 --deployment prune-and-evaluate/run --parallel 4   # on its workers
\b
A file with a `grid:` mapping (key: [values]) is a sweep: every combination, plus one dense run per
model (`dense_baseline: false` to skip it). Results: RUN/results.json and the results database
(--database-url, else $ECOFLAP_DATABASE_URL, else SQLite). Steps are cached by Prefect (results
persisted in $ECOFLAP_RUN_CACHE, default ~/.cache/ecoflap/runs): the same command again resumes,
and `ecoflap prune` / `ecoflap eval` with the same settings reuse what `run` computed.
With --deployment the runs go to the deployment's workers (--parallel at a time) and this command waits
for them: output folders, input files and a SQLite database are sent as absolute paths, and so is
$ECOFLAP_RUN_CACHE when set (share it with the workers); a failed run fails the sweep, naming it.
"""


def prefect_defaults() -> None:
    """Offline-friendly Prefect settings, unless the user set them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _grid_flags(values: tuple[str, ...]) -> dict[str, list[Any]]:
    grid = {}
    for item in values:
        key, sep, choices = item.partition("=")
        if not sep or not key or not choices:
            raise EcoflapError(f"--grid {item!r}: give KEY=VALUE,VALUE (e.g. sparsity=0.5,0.6)")
        grid[key.strip().replace("-", "_")] = [yaml.safe_load(c) for c in choices.split(",")]
    return grid


def load_target(config_file: Path | None, flags: dict[str, Any], grid: tuple[str, ...]) -> Any:
    """A validated RunConfig or SweepConfig from the file and the flags; nothing is loaded yet."""
    values = common.merge(common.read_yaml(config_file), flags)
    if grid:
        values["grid"] = (values.get("grid") or {}) | _grid_flags(grid)
    is_sweep = bool(values.get("grid")) or any(k in values for k in SWEEP_KEYS if k != "dense_baseline")
    sweep = build_sweep(values)
    return sweep if is_sweep else sweep.base


def compared(target: Any) -> SweepConfig:
    """``--compare``: the run beside the uniform allocation of the same budget and pruner and the dense model (same
    calibration, same evaluation; the uniform run reuses the calibration and costs only its fine step and
    evaluation), as one sweep whose root is ``-o`` (default ``runs``): each run in ROOT/<run name>."""
    if isinstance(target, SweepConfig):
        raise EcoflapError("--compare applies to one run: a sweep compares with --grid allocator=A,uniform")
    if target.dense or target.allocator == "uniform":
        raise EcoflapError("--compare puts a run beside uniform and dense: give it another --allocator (e.g. ecoflap)")
    return build_sweep(target.model_dump(exclude_unset=True) | {"grid": {"allocator": ["uniform", target.allocator]}})


RUN_ONLY = ("task_args", "save_model", "refresh", "record", "tasks", "output", "database_url")


def run_options(command: Any) -> Any:
    """The options of ``run`` and ``prune``: every RunConfig field, generated from the config model."""
    for option in reversed(
        [
            click.option("-C", "--config", "config_file", type=click.Path(path_type=Path), help="YAML run config"),
            click.option("--task", "tasks", multiple=True, help=RunConfig.model_fields["tasks"].description),
            click.option("-o", "--output", help=RunConfig.model_fields["output"].description),
            click.option(
                "--database-url", "--db", "database_url", help=RunConfig.model_fields["database_url"].description
            ),
            click.option(
                "--cache/--no-cache", default=True, help="reuse the steps computed before (Prefect's cache) [cache]"
            ),
            click.option(
                "--record/--no-record", default=None, help="record the results in the results database [record]"
            ),
            click.option("--strict", is_flag=True, help="a plugin that fails to load fails the command"),
            click.option(
                "--compare",
                is_flag=True,
                help="also run uniform (same budget and pruner) and the dense model, and print them side by side; "
                "-o is then the folder of the three runs",
            ),
        ]
    ):
        command = option(command)
    return config_options(RunConfig, skip=RUN_ONLY)(command)


def execute(target: Any, strict: bool, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Check names, the results database and the output folders, then run the flow; the summaries of its runs."""
    from ecoflap.pipelines.steps import preflight

    registries = common.registries(strict)
    target = placed(target)
    runs = target.runs() if isinstance(target, SweepConfig) else [target]
    for run in runs:
        preflight(run, registries, output_dir(target, run))
    for url in dict.fromkeys(run.database_url for run in runs if run.record):
        check_database(url)
    common.threads()
    prefect_defaults()
    from ecoflap.pipelines.flows import run_flow

    result = run_flow(target, timeout_s)
    summaries = result if isinstance(result, list) else [result]
    documents = [read_json(summary["results"]) for summary in summaries]
    click.echo(format_table(documents[0]) if len(documents) == 1 else comparison_table(documents))
    for summary in summaries:
        click.echo(_summary_line(summary))
    return summaries


def check_database(url: str | None) -> None:
    """The results database accepts writes (else one line: EcoflapError), before Prefect starts."""
    from ecoflap.evaluation.results.store import check_writable

    check_writable(url)


def placed(target: Any) -> Any:
    """The run's output folder, or the sweep's root folder, made absolute: results land where the caller said,
    even when a worker elsewhere (its own working folder) runs them."""
    if isinstance(target, SweepConfig):
        return target.model_copy(update={"base": placed(target.base.model_copy(update={"output": str(target.root())}))})
    return target.model_copy(update={"output": str(target.output_dir().expanduser().resolve())})


def output_dir(target: Any, run: Any) -> Path:
    return run.output_dir(target.root(), target.with_seed()) if isinstance(target, SweepConfig) else run.output_dir()


@click.command("run", cls=GroupedCommand, epilog=RUN_EXAMPLES)
@run_options
@click.option("--grid", multiple=True, help="KEY=V1,V2: sweep over these values (repeatable)")
@click.option("--dense-baseline/--no-dense-baseline", default=None, help="a sweep's dense run per model [yes]")
@click.option("--parallel", type=int, help="sweep runs at once: in this process, or on the workers [1]")
@click.option("--deployment", help="fan a sweep out as runs of this deployment (FLOW/NAME; workers in a pool)")
@click.option(
    "--deployment-timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="seconds to wait for the deployment's runs; unfinished ones are then cancelled [no limit]",
)
def run_command(
    config_file: Path | None,
    grid: tuple[str, ...],
    strict: bool,
    cache: bool,
    compare: bool,
    timeout_s: float | None,
    **flags: Any,
) -> None:
    """Prune, evaluate and record as a Prefect flow (resumable; no server needed)."""
    target = load_target(config_file, flags | {"refresh": None if cache else True}, grid)
    target = compared(target) if compare else target
    if timeout_s is not None and not getattr(target, "deployment", None):
        raise EcoflapError("--deployment-timeout applies to a sweep with --deployment: give both, or neither")
    execute(target, strict, timeout_s)


def _summary_line(summary: dict[str, Any]) -> str:
    metrics = ", ".join(f"{m['task']} {m['metric']} {m['value']:.4g}" for m in summary["metrics"][:4])
    return json.dumps(
        {k: summary[k] for k in ("run_name", "run_id", "measured_sparsity", "results")} | {"metrics": metrics}
    )


def register(group: click.Group) -> None:
    """Add ``run`` to the ``ecoflap`` group."""
    group.add_command(run_command)
