"""The ``ecoflap`` command line (click). User mistakes end in one line and exit status 1."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from ecoflap_core.errors import EcoflapError

PRUNE_EXAMPLES = """
\b
Examples:
  ecoflap prune                                   # the embedded default job (mini-blip2, VQA)
  ecoflap prune --model smollm2-135m              # a language model (held-out perplexity)
  ecoflap prune --towers language --pruner magnitude --allocator uniform
  ecoflap prune --pruner sparsegpt --allocator uniform --sparsity 0.6
  ecoflap prune --scorer first-order --sparsity 0.6 --max-sparsity 0.7 -o out/fo60
  ecoflap prune --allocator uniform --nm 2:4
  ecoflap prune -C run.yaml --seed 1              # flags override the file
"""


@functools.cache
def _registries(strict: bool) -> Any:
    """Plugins, loaded once per process; load failures are reported once, as warnings."""
    from ecoflap_core.plugins import load_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)
        return load_plugins(strict=strict)


def _threads() -> None:
    """Torch threads = the cores this process may use, unless ECOFLAP_THREADS / OMP_NUM_THREADS say."""
    import torch

    wanted = os.environ.get("ECOFLAP_THREADS") or os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(wanted) if wanted else max(len(os.sched_getaffinity(0)), 1))


class Root(click.Group):
    """Turns EcoflapError (and plugin mistakes) into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcoflapError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ecoflap")
def cli() -> None:
    """ecoflap: ECoFLaP coarse-to-fine layer-wise pruning of (vision-)language models."""


def _read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EcoflapError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EcoflapError(f"config file {path} must be a mapping of keys to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _merge(file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The config file, overridden by every flag given on the command line."""
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    return file_values | {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}


@cli.command(epilog=PRUNE_EXAMPLES)
@click.option("-C", "--config", "config_file", type=click.Path(path_type=Path), help="YAML run config")
@click.option("--model", help="registered model name or a local model folder [mini-blip2]")
@click.option("--targets", multiple=True, help="regex of layers to prune (repeatable)")
@click.option("--ignore", multiple=True, help="regex of layers to keep dense (repeatable)")
@click.option("--towers", multiple=True, help="prune only this tower, e.g. vision or language (repeatable)")
@click.option("--corpus", help="calibration/perplexity text: 'wikipedia' or a path [wikipedia]")
@click.option("--scorer", help="coarse scorer [zeroth-order]")
@click.option("--allocator", help="sparsity allocator: ecoflap, uniform, from-file [ecoflap]")
@click.option("--allocation-file", help="JSON sparsity dictionary for --allocator from-file")
@click.option("--pruner", help="layer pruner: wanda, sparsegpt, magnitude [wanda]")
@click.option("--sparsity", type=float, help="global target sparsity in [0, 1) [0.5]")
@click.option("--max-sparsity", type=float, help="cap per group [sparsity + 0.1]")
@click.option("--granularity", type=click.Choice(["layer", "block", "tower"]), help="allocation groups [block]")
@click.option("--aggregation", type=click.Choice(["sum", "avg"]), help="group score [sum]")
@click.option("--per-tower/--shared-budget", default=None, help="one budget per tower [shared]")
@click.option("--nm", help="N:M semi-structured pattern, e.g. 2:4")
@click.option("--comparison", type=click.Choice(["auto", "row", "matrix"]), help="Wanda comparison group")
@click.option("--nsamples", type=int, help="calibration samples [32]")
@click.option("--seqlen", type=int, help="tokens per calibration sample [512]")
@click.option("--score-nsamples", type=int, help="samples for the coarse step [8]")
@click.option("--score-seqlen", type=int, help="tokens per coarse-step sample [128]")
@click.option("--seed", type=int, help="seed of calibration windows and perturbations [42]")
@click.option("--micro-batch", type=int, help="samples per forward pass [4]")
@click.option("--zo-eps", type=float, help="zeroth-order perturbation size [1e-3]")
@click.option("--zo-noise", type=int, help="perturbations per tensor per group [1]")
@click.option("--zo-group", type=int, help="samples sharing one perturbation [1]")
@click.option("--zo-level", type=click.Choice(["tensor", "block"]), help="perturb one tensor or a whole block")
@click.option("--fo-variant", type=click.Choice(["grad-mag-abs", "grad-only", "grad-mag-square"]))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="folder for the pruned model [runs/NAME]")
@click.option("--save/--no-save", default=True, help="save the pruned model [save]")
@click.option(
    "--perplexity/--no-perplexity",
    "--eval/--no-eval",
    "ppl",
    default=True,
    help="measure after pruning: held-out perplexity (LMs) or easy-vqa accuracy (VQA models)",
)
@click.option(
    "--dense-perplexity", "--dense-eval", "dense_perplexity", is_flag=True, help="also measure the dense model"
)
@click.option("--vqa-questions", type=int, default=300, show_default=True, help="easy-vqa test questions to answer")
@click.option("--ppl-tokens", type=int, default=16384, show_default=True, help="held-out tokens to evaluate")
@click.option("--strict", is_flag=True, help="a plugin that fails to load fails the command")
def prune(
    config_file: Path | None,
    output: Path | None,
    save: bool,
    ppl: bool,
    dense_perplexity: bool,
    ppl_tokens: int,
    vqa_questions: int,
    strict: bool,
    **flags: Any,
) -> None:
    """Prune a model with ECoFLaP (or a baseline) and report sparsity and perplexity."""
    from ecoflap_core.config import PruneConfig
    from pipelines.prune import EvalOptions, run_prune

    config = PruneConfig.build(**_merge(_read_yaml(config_file), flags))
    if ppl_tokens < 1:
        raise EcoflapError("--ppl-tokens must be at least 1")
    if vqa_questions < 0:
        raise EcoflapError("--vqa-questions must be 0 or more")
    _threads()
    target = (output or Path("runs") / default_run_name(config)) if save else None
    report = run_prune(
        _registries(strict),
        config,
        target,
        EvalOptions(ppl, dense_perplexity, ppl_tokens, min(config.seqlen, 2048), vqa_questions),
        log=click.echo,
    )
    click.echo(json.dumps({k: report[k] for k in ("measured_sparsity", "timings_s") if k in report}))


def default_run_name(config: Any) -> str:
    method = "uniform" if config.allocator != "ecoflap" else f"ecoflap-{config.scorer}"
    pattern = config.nm.replace(":", "of") if config.nm else f"s{config.sparsity:g}"
    return f"{Path(config.model).name}_{method}_{config.pruner}_{pattern}"


@cli.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="model name or folder")
@click.option("--corpus", default="wikipedia", show_default=True)
@click.option("--ppl-tokens", type=int, default=16384, show_default=True)
@click.option("--seqlen", type=int, default=512, show_default=True, help="window length")
def perplexity(model: str, corpus: str, ppl_tokens: int, seqlen: int) -> None:
    """Held-out perplexity of a (pruned) causal LM through lm-eval's loglikelihood_rolling."""
    from ecoflap_core.config import PruneConfig
    from pipelines.prune import EvalOptions, calibration_texts, evaluate_perplexity, load_model

    config = PruneConfig.build(model=model, corpus=corpus)
    _threads()
    adapter = load_model(_registries(False), config)
    _, heldout = calibration_texts(corpus)
    result = evaluate_perplexity(adapter, heldout, EvalOptions(True, False, ppl_tokens, seqlen))
    click.echo(json.dumps(result, indent=2))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--strict", is_flag=True, help="fail if a plugin fails to load")
def plugins_command(as_json: bool, strict: bool) -> None:
    """List plugins, their versions and what each registered."""
    from dataclasses import asdict

    infos = [asdict(info) for info in _registries(strict).plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        status = f"  FAILED: {info['error']}" if info["error"] else ""
        click.echo(f"{info['name']} ({info['distribution'] or '-'} {info['version'] or ''}){status}")
        for kind, names in info["registered"].items():
            click.echo(f"    {kind}: {', '.join(names)}")


@cli.command("ls")
@click.argument("kind", type=click.Choice(["pruners", "scorers", "allocators", "models", "tasks"]))
def ls_command(kind: str) -> None:
    """List registered pruners, scorers, allocators, models or tasks."""
    registry = getattr(_registries(False), kind)
    for entry in registry.entries():
        doc = getattr(entry.obj, "description", None) or (entry.obj.__doc__ or "").strip().split("\n")[0]
        click.echo(f"{entry.name:<16} {entry.plugin:<14} {doc}")


def _plugin_commands() -> None:
    """Sub-commands from plugins (``register_commands``)."""
    try:
        registries = _registries(False)
    except EcoflapError:
        return
    if registries.manager is not None:
        registries.manager.hook.register_commands(cli=cli)


if __name__ != "__main__":
    __import__("pipelines.run_cli").run_cli.register(cli)  # ecoflap run / serve (Prefect flows)
    __import__("pipelines.results_cli").results_cli.register(cli)  # ecoflap results / regress
    __import__("pipelines.eval_cli").eval_cli.register(cli)  # ecoflap eval / validate
    __import__("pipelines.dashboard_cli").dashboard_cli.register(cli)  # ecoflap dashboard


def main() -> None:
    _plugin_commands()
    cli(prog_name="ecoflap")


if __name__ == "__main__":
    # `python -m pipelines.cli`: run the importable module, not this __main__ copy, so that the
    # command modules above (which import pipelines.cli) see one fully initialised module
    from pipelines.cli import main as module_main

    sys.exit(module_main())
