"""``ecoflap eval`` (tasks on a dense or pruned model -> results.json in lm-eval's shape) and ``ecoflap validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ecoflap.core.config import MAX_EXAMPLES, MAX_SEED, CheckpointReport
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import read_json
from ecoflap.pipelines import common

EVAL_EXAMPLES = """
\b
Examples:
  ecoflap eval --model smollm2-135m --tasks wikitext,mmlu --limit 20 -o out/dense
  ecoflap eval --model smollm2-135m --checkpoint runs/x --tasks wikitext -o out/x
  ecoflap eval --model mini-blip2 --tasks vqa,captioning,retrieval --task-arg vqa.mode=rank
  ecoflap eval --tasks vqa --data-dir data/ --task-arg vqa.questions=data/vqa/q.json
  ecoflap ls tasks                                # what each task measures and its default data
"""


class EvalConfig(BaseModel):
    """What ``ecoflap eval`` and ``ecoflap validate`` read from ``-C FILE`` and flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("smollm2-135m", min_length=1)
    checkpoint: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["wikitext"], min_length=1)
    data_dir: str | None = None
    limit: int | None = Field(None, ge=1, le=MAX_EXAMPLES)
    seed: int = Field(1234, ge=0, le=MAX_SEED)
    task_args: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    overwrite: bool = False
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @classmethod
    def build(cls, values: dict[str, Any]) -> EvalConfig:
        from ecoflap.core.config import describe_validation_error

        try:
            return cls(**values)
        except ValidationError as exc:
            raise EcoflapError(describe_validation_error(exc)) from None

    def options(self) -> Any:
        """The task options ``validate`` reads the data with (no model, no progress)."""
        from ecoflap.core.tasks import TaskOptions

        data_dir = Path(self.data_dir).expanduser() if self.data_dir else None
        return TaskOptions(data_dir, self.limit, self.seed, dict(self.task_args))


def _values(config_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The config file's values overridden by the flags given; ``--tasks a,b`` and ``--task-arg k=v`` parsed."""
    values = common.merge(
        common.read_yaml(config_file), {k: v for k, v in flags.items() if k not in ("tasks", "task_arg")}
    )
    if flags.get("tasks"):
        values["tasks"] = [t.strip() for t in flags["tasks"].split(",") if t.strip()]
    if isinstance(values.get("tasks"), str):
        values["tasks"] = [t.strip() for t in values["tasks"].split(",") if t.strip()]
    for item in flags.get("task_arg") or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EcoflapError(f"--task-arg takes key=value (or task.key=value), not {item!r}")
        values.setdefault("task_args", {})
        values["task_args"] = dict(values["task_args"]) | {key.strip(): value}
    return values


def check_tasks(config: EvalConfig, registries: Any) -> list[str]:
    """The task names, each registered (``all`` = every registered task); unknown -> one error line."""
    names = list(registries.tasks.names()) if config.tasks == ["all"] else list(dict.fromkeys(config.tasks))
    for name in names:
        registries.tasks.entry(name)  # UnknownNameError with "Did you mean ..."
    return names


def check_model(config: EvalConfig, registries: Any) -> None:
    """The model and the checkpoint folder resolve to an adapter (a broken folder fails here), and the
    checkpoint's report.json, if any, holds what its results block needs."""
    from ecoflap.core.job import resolve_model

    resolve_model(registries, config.model)
    if config.checkpoint is None:
        return
    checkpoint = Path(config.checkpoint).expanduser()
    if not checkpoint.is_dir():
        raise EcoflapError(f"checkpoint folder not found: {config.checkpoint}")
    resolve_model(registries, str(checkpoint))
    if (checkpoint / "report.json").is_file():
        CheckpointReport.read(checkpoint / "report.json")


def check_data(config: EvalConfig, registries: Any, names: list[str], given_only: bool) -> list[str]:
    """Read each task's data without a model; one line per task (errors stop at the first bad file)."""
    from ecoflap.evaluation.runner import task_options
    from ecoflap.evaluation.tasks.base import check_args

    lines = []
    for name in names:
        task_cls = registries.tasks.get(name)
        options = task_options(config.options(), name)
        check_args(options)
        given = options.data_dir is not None or options.extra.get("data")
        describe = getattr(task_cls, "describe_data", None)
        if describe is not None and (given or not given_only):
            lines.append(f"{name}: {describe(options)}")
    return lines


_COMMON = [
    click.option("-C", "--config", "config_file", type=click.Path(path_type=Path), help="YAML eval config"),
    click.option("--model", help="registered model name or a local folder [smollm2-135m]"),
    click.option("--checkpoint", help="a pruned model folder (from ecoflap prune / run) to evaluate"),
    click.option("--tasks", help="comma-separated task names, or 'all' [wikitext]"),
    click.option("--data-dir", help="task data in its standard format (DIR/<task>/ if present, else DIR)"),
    click.option("--task-arg", multiple=True, help="task setting key=value or task.key=value (repeatable)"),
    click.option("--limit", type=int, help="at most N examples per task"),
]


def _common(fn: Any) -> Any:
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


@click.command("eval", epilog=EVAL_EXAMPLES)
@_common
@click.option("--seed", type=int, help="evaluation seed [1234]")
@click.option("-o", "--output", help="folder for results.json [the checkpoint, else runs/<model>_dense]")
@click.option(
    "--overwrite", is_flag=True, default=None, help="replace an output folder (or results.json) that is not ecoflap's"
)
@click.option("--device", help="where the model is evaluated: auto (a GPU if any, else cpu), cpu, cuda[:N] [auto]")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="the weights' precision [float32]")
@click.option("--cache/--no-cache", default=True, help="reuse task results computed before (Prefect's cache) [cache]")
@click.option("--strict", is_flag=True, help="a plugin that fails to load fails the command")
def eval_command(config_file: Path | None, cache: bool, strict: bool, **flags: Any) -> None:
    """Evaluate a dense or pruned model on tasks; write results.json (lm-eval's shape) and print the table."""
    from ecoflap.evaluation.runner import format_table
    from ecoflap.pipelines.run_config import EvalRequest
    from ecoflap.pipelines.steps import check_results_folder, eval_config

    config = EvalConfig.build(_values(config_file, flags))
    registries = common.registries(strict)
    names = check_tasks(config, registries)
    check_model(config, registries)
    for line in check_data(config, registries, names, given_only=True):
        click.echo(f"data ok: {line}", err=True)
    output = (
        Path(config.output) if config.output else Path(config.checkpoint or f"runs/{Path(config.model).name}_dense")
    )
    check_results_folder(output, config.checkpoint, config.overwrite)
    common.threads()
    request = EvalRequest(model=config.model, checkpoint=config.checkpoint, limit=config.limit, seed=config.seed,
                          task_args=dict(config.task_args), data_dir=config.data_dir, device=config.device,
                          dtype=config.dtype)  # fmt: skip
    eval_config(request)  # a device this machine lacks fails here, before the model loads
    from ecoflap.pipelines.flows import run_evaluation  # Prefect, imported once every input is checked

    path = run_evaluation(request, names, str(output), refresh=not cache, overwrite=config.overwrite)
    click.echo(format_table(read_json(path)))
    click.echo(f"wrote {path}")


@click.command("validate")
@_common
def validate_command(config_file: Path | None, **flags: Any) -> None:
    """Check a config, the model name, the task list and each task's data, without loading any model."""
    config = EvalConfig.build(_values(config_file, flags))
    registries = common.registries(False)
    check_model(config, registries)
    names = check_tasks(config, registries)
    for line in check_data(config, registries, names, given_only=False):
        click.echo(f"ok  {line}")
    click.echo(f"valid: model {config.model}, tasks {', '.join(names)}")


def register(group: click.Group) -> None:
    """Add ``eval`` and ``validate`` to the ``ecoflap`` group."""
    group.add_command(eval_command)
    group.add_command(validate_command)
