"""``ecoflap prune``: one pruning job on the embedded defaults, a config file or flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.pipelines.common import merge, read_yaml, registries, threads
from ecoflap.pipelines.prune import EvalOptions, run_prune
from ecoflap.pipelines.run_config import default_run_name

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


@click.command(epilog=PRUNE_EXAMPLES)
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
    config = PruneConfig.build(**merge(read_yaml(config_file), flags))
    if ppl_tokens < 1:
        raise EcoflapError("--ppl-tokens must be at least 1")
    if vqa_questions < 0:
        raise EcoflapError("--vqa-questions must be 0 or more")
    threads()
    target = (output or Path("runs") / default_run_name(config)) if save else None
    report = run_prune(
        registries(strict),
        config,
        target,
        EvalOptions(ppl, dense_perplexity, ppl_tokens, min(config.seqlen, 2048), vqa_questions),
        log=click.echo,
    )
    click.echo(json.dumps({k: report[k] for k in ("measured_sparsity", "timings_s") if k in report}))
