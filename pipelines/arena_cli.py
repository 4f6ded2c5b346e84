"""``ecoflap arena``: every allocator x pruner on one model at several sparsities, against uniform and dense.

Each cell is one run of ``ecoflap run`` (the prune-and-evaluate flow, its cached steps shared: the coarse scores of
an allocator are computed once for every pruner and sparsity, and a uniform cell runs on the same calibration),
recorded in the results database with its per-layer allocation and each step's time and peak memory. A cell whose
run is recorded already (same model, method identity, evaluation settings and tasks) is skipped, so the same
command resumes. ``--table`` prints the ranking per model and sparsity and writes it as JSON.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import method_key, write_json
from ecoflap.evaluation.results.arena import (
    Cell,
    arena_document,
    arena_markdown,
    arena_rows,
    recorded,
    versus_uniform,
    versus_uniform_markdown,
)
from ecoflap.pipelines import common, run_cli
from ecoflap.pipelines.common import GroupedCommand, config_options
from ecoflap.pipelines.run_config import RunConfig, SweepConfig, build_sweep

BASELINE = "uniform"  # every arena has its cells, whatever --allocators says
NOT_IN_ARENA = ("from-file",)  # allocators that need an input of the user's: never a default
DEFAULT_PRUNERS = ("wanda", "sparsegpt", "ria")  # those registered
DEFAULT_TABLE = Path("benchmarks/results/arena.json")
GRID_KEYS = ("allocator", "pruner", "sparsity", "dense", "nm", "allocation_file")


@dataclass(frozen=True)
class Preset:
    """A model's arena: its run settings (the evaluation the README reports) and sparsities."""

    settings: dict[str, Any]
    sparsities: tuple[float, ...]


PRESETS = {
    "smollm2": Preset(
        {"model": "smollm2-135m", "tasks": ["wikitext"], "limit": None,
         "task_args": {"tokens": 16384, "max_length": 512}},  # held-out WikiText perplexity, as the README
        (0.5, 0.6, 0.7),
    ),
    "mini-blip2": Preset({"model": "mini-blip2", "tasks": ["vqa"], "limit": 400}, (0.3, 0.4)),
}  # fmt: skip
GENERIC = Preset({}, (0.5, 0.6))  # another model: its own task (auto)

ARENA_EXAMPLES = """
\b
Examples:
  ecoflap arena                                   # SmolLM2-135M at 50/60/70%, WikiText perplexity
  ecoflap arena --preset mini-blip2               # mini-blip2 at 30/40%, VQA accuracy
  ecoflap arena --allocators ecoflap,owl --pruners wanda --sparsities 0.5,0.6
  ecoflap arena --dry-run                         # the cells, and which are recorded already
  ecoflap arena --table                           # the ranking; writes benchmarks/results/arena.json
\b
Defaults: every registered allocator but from-file (uniform always), the pruners wanda, sparsegpt and ria
(those registered), the preset's sparsities, plus the dense model. Settings: the preset, then -C FILE, then flags.
Cells land in -o ROOT/<run name> [arena/<model>] and in the results database (--database-url, else
$ECOFLAP_DATABASE_URL, else SQLite); cells recorded before are skipped (--rerun-recorded runs them again, from
Prefect's step cache unless --no-cache).
"""


@dataclass
class Arena:
    """The grid of one arena: a base run, its allocators, pruners and sparsities, and the dense baseline."""

    base: RunConfig
    allocators: list[str]
    pruners: list[str]
    sparsities: list[float]
    dense: bool = True
    cells: list[RunConfig] = field(init=False)

    def __post_init__(self) -> None:
        self.cells = self.sweep(self.allocators, self.pruners, self.sparsities, self.dense).runs()

    def sweep(self, allocators: Sequence[str], pruners: Sequence[str], sparsities: Sequence[float],
              dense: bool) -> SweepConfig:  # fmt: skip
        """These cells as one sweep of ``ecoflap run`` (each point checked)."""
        grid = {"allocator": list(allocators), "pruner": list(pruners), "sparsity": list(sparsities)}
        return build_sweep(self.base.model_dump(exclude_unset=True) | {"grid": grid, "dense_baseline": dense})


def split(text: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (each name once)."""
    return list(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))


def sparsity_list(text: str | None, default: Sequence[float]) -> list[float]:
    if not text:
        return list(default)
    try:
        return sorted({float(part) for part in split(text)})
    except ValueError:
        raise EcoflapError(f"--sparsities {text!r}: give numbers separated by commas, e.g. 0.5,0.6") from None


def allocators_of(registries: Any, given: str | None) -> list[str]:
    """The allocators asked for (each must be registered), else every one registered but from-file; uniform last."""
    names = split(given) or [name for name in registries.allocators.names() if name not in NOT_IN_ARENA]
    for name in names:
        registries.allocators.get(name)  # an unknown name: "Did you mean ...", before anything runs
        if name in NOT_IN_ARENA:
            raise EcoflapError(f"--allocators: {name} allocates from a file of the user's and has no arena cells")
    return [name for name in names if name != BASELINE] + [BASELINE]


def pruners_of(registries: Any, given: str | None) -> list[str]:
    names = split(given) or [name for name in DEFAULT_PRUNERS if name in registries.pruners]
    for name in names:
        registries.pruners.get(name)
    return names


def preset_of(preset: str | None, model: str | None) -> Preset:
    """The named preset, else the preset of ``model``, else the generic one (SmolLM2's when neither is given)."""
    if preset is not None:
        return PRESETS[preset]
    if model is None:
        return PRESETS["smollm2"]
    return next((p for p in PRESETS.values() if p.settings["model"] == model), GENERIC)


def plan(flags: dict[str, Any], config_file: Path | None, registries: Any) -> Arena:
    """The arena the command line describes, validated (names, values, every cell); nothing runs."""
    file_values = common.read_yaml(config_file)
    chosen = preset_of(flags.pop("preset"), flags.get("model") or file_values.get("model"))
    allocators = allocators_of(registries, flags.pop("allocators"))
    pruners = pruners_of(registries, flags.pop("pruners"))
    sparsities = sparsity_list(flags.pop("sparsities"), chosen.sparsities)
    dense = flags.pop("dense_baseline")
    values = common.merge(chosen.settings | file_values, flags)
    if set(values) & set(GRID_KEYS):
        raise EcoflapError(f"the arena sets {', '.join(sorted(set(values) & set(GRID_KEYS)))} itself: remove it")
    output = values.get("output") or str(Path("arena") / Path(values.get("model") or "mini-blip2").name)
    base = RunConfig.build(**values | {"output": str(Path(output).expanduser().resolve())})
    return Arena(base, allocators, pruners, sparsities, dense is not False)


def cell_identity(run: RunConfig) -> Cell:
    """How the results database knows the cell's run (see :class:`Cell`)."""
    from ecoflap.pipelines.steps import AUTO_TASKS, request_for

    evaluation = request_for(run, {"weights_hash": None}, None).evaluation()
    tasks = tuple(task for task in run.tasks if task != "auto")
    return Cell(run.model, None if run.dense else method_key(run.method()), Cell.settings(evaluation), tasks,
                AUTO_TASKS if "auto" in run.tasks else ())  # fmt: skip


def recorded_runs(url: str | None) -> list[dict[str, Any]]:
    """Every run in the results database (none when its SQLite file is still to be made)."""
    from ecoflap.evaluation.results.store import ResultsStore, resolve_url, sqlite_path

    path = sqlite_path(resolve_url(url))
    if path is not None and not path.exists():
        return []
    store = ResultsStore(url)
    try:
        return store.runs()
    finally:
        store.close()


def todo_targets(arena: Arena, todo: list[RunConfig], parallel: int | None, deployment: str | None) -> list[Any]:
    """The cells still to run as few sweeps as their grid allows (one when none is recorded; a dense run alone)."""
    pruned = [run for run in todo if not run.dense]
    dense = any(run.dense for run in todo)
    by_allocator: dict[str, set[tuple[str, float]]] = {}
    for run in pruned:
        by_allocator.setdefault(run.allocator, set()).add((run.pruner, run.sparsity))
    sweeps = []
    for points, allocators in _same(by_allocator).items():
        pruners = [p for p in arena.pruners if any(q == p for q, _ in points)]
        by_pruner = {p: frozenset(s for q, s in points if q == p) for p in pruners}
        for sparsities, pruners in _same(by_pruner).items():
            sweeps.append(arena.sweep(allocators, pruners, sorted(sparsities), dense and not sweeps))
    sweeps = [s.model_copy(update={"parallel": parallel or 1, "deployment": deployment}) for s in sweeps]
    if dense and not sweeps:
        (run,) = [r for r in todo if r.dense]
        return [run.model_copy(update={"output": str(run.output_dir(arena.base.output_dir()))})]
    return sweeps


def _same(values: dict[str, Any]) -> dict[Any, list[str]]:
    """Keys grouped by equal value (first-seen order)."""
    groups: dict[Any, list[str]] = {}
    for key, value in values.items():
        groups.setdefault(frozenset(value), []).append(key)
    return groups


def primary_metrics(registries: Any) -> dict[str, str]:
    """Each task's first metric: what the arena ranks by (word perplexity, VQA accuracy, ...)."""
    return {entry.name: entry.obj.metrics[0].name for entry in registries.tasks.entries() if entry.obj.metrics}


def check_table_file(path: Path | None) -> None:
    from ecoflap.core.outputs import check_writable

    if path is not None:
        if path.is_dir():
            raise EcoflapError(f"--json {path} is a folder: give a file name, e.g. {DEFAULT_TABLE}")
        check_writable(path.parent, f"the arena table {path}")


def show_table(url: str | None, model: str | None, json_path: Path | None, registries: Any) -> None:
    """Print the ranking per model and sparsity (markdown) and write it as JSON."""
    from ecoflap.evaluation.dashboard.store import ReadOnlyStore

    check_table_file(json_path)
    store = ReadOnlyStore(url)
    try:
        rows = arena_rows(store, model=model, metrics=primary_metrics(registries))
    finally:
        store.close()
    click.echo(arena_markdown(rows) if rows else f"no recorded arena cells{f' of {model}' if model else ''}")
    if rows:
        click.echo("Each allocator against uniform (same model, pruner and sparsity):\n")
        click.echo(versus_uniform_markdown(versus_uniform(rows)))
    if json_path is not None:
        command = shlex.join(["ecoflap", "arena", "--table", *(["--model", model] if model else [])])
        write_json(json_path, arena_document([_without_blocks(row) for row in rows], command))
        click.echo(f"wrote {json_path}")


def _without_blocks(row: dict[str, Any]) -> dict[str, Any]:
    return row | {"blocks": [{"block": b["block"], "target": round(b["target"], 6)} for b in row["blocks"]]}


def run_arena(arena: Arena, options: dict[str, Any], registries: Any) -> None:
    """Check everything, skip the recorded cells, run the rest as sweeps of ``ecoflap run``, print the ranking."""
    from ecoflap.pipelines.steps import preflight

    url = arena.base.database_url
    run_cli.check_database(url)
    done = recorded(recorded_runs(url), [cell_identity(run) for run in arena.cells])
    if options["rerun"]:
        done = [False] * len(done)
    todo = [run for run, skip in zip(arena.cells, done, strict=True) if not skip]
    for run in todo:
        preflight(run, registries, run.output_dir(arena.base.output_dir()))
    click.echo(_plan_line(arena, len(arena.cells) - len(todo), len(todo)))
    if options["dry_run"]:
        for run, skip in zip(arena.cells, done, strict=True):
            click.echo(f"  {'recorded' if skip else 'to run  '}  {run.run_name()}")
        return
    for target in todo_targets(arena, todo, options["parallel"], options["deployment"]):
        run_cli.execute(target, options["strict"])
    show_table(url, arena.base.model, None, registries)


def _plan_line(arena: Arena, skipped: int, todo: int) -> str:
    grid = f"{len(arena.allocators)} allocators x {len(arena.pruners)} pruners x {len(arena.sparsities)} sparsities"
    dense = " + dense" if arena.dense else ""
    return f"arena {arena.base.model}: {len(arena.cells)} cells ({grid}{dense}); {skipped} recorded, {todo} to run"


ARENA_SKIP = run_cli.RUN_ONLY + GRID_KEYS + ("model", "overwrite", "save_model")


@click.command("arena", cls=GroupedCommand, epilog=ARENA_EXAMPLES)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="a model's arena [smollm2, or --model's]")
@click.option("--model", help="registered model name or a local model folder [the preset's]")
@click.option("--allocators", help="comma-separated [every registered but from-file; uniform always]")
@click.option("--pruners", help=f"comma-separated [{', '.join(DEFAULT_PRUNERS)}: those registered]")
@click.option("--sparsities", help="comma-separated target sparsities [the preset's]")
@click.option("-C", "--config", "config_file", type=click.Path(path_type=Path), help="YAML settings of every run")
@click.option("--task", "tasks", multiple=True, help="evaluation task (repeatable) [the preset's, else auto]")
@click.option("-o", "--output", help="root folder of the cells' run folders [arena/MODEL]")
@click.option("--database-url", "--db", "database_url", help=RunConfig.model_fields["database_url"].description)
@click.option("--dense-baseline/--no-dense-baseline", default=None, help="the dense model's cell [yes]")
@click.option("--rerun-recorded", "rerun", is_flag=True, help="run the cells recorded before too")
@click.option("--cache/--no-cache", default=True, help="reuse the steps computed before (Prefect's cache) [cache]")
@click.option("--parallel", type=click.IntRange(1, 256), help="cells at once: here, or on the workers [1]")
@click.option("--deployment", help="run the cells on this deployment's workers (FLOW/NAME)")
@click.option("--dry-run", is_flag=True, help="list the cells and which are recorded; run nothing")
@click.option("--table", is_flag=True, help="print the recorded ranking (per model and sparsity) and write --json")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help=f"--table's JSON file [{DEFAULT_TABLE}]")
@click.option("--strict", is_flag=True, help="a plugin that fails to load fails the command")
@config_options(RunConfig, skip=ARENA_SKIP)
def arena_command(config_file: Path | None, table: bool, json_path: Path | None, **flags: Any) -> None:
    """Every allocator x pruner at several sparsities, with uniform and dense baselines, recorded (resumable)."""
    options = {k: flags.pop(k) for k in ("rerun", "parallel", "deployment", "dry_run", "strict")}
    registries = common.registries(options["strict"])
    if table:
        model = flags["model"] or (PRESETS[flags["preset"]].settings["model"] if flags["preset"] else None)
        show_table(flags["database_url"], model, json_path or DEFAULT_TABLE, registries)
        return
    cache = flags.pop("cache")
    arena = plan(flags | {"refresh": None if cache else True}, config_file, registries)
    run_arena(arena, options, registries)


def register(group: click.Group) -> None:
    """Add ``arena`` to the ``ecoflap`` group."""
    group.add_command(arena_command)
