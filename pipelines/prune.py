"""The ``ecoflap prune`` job: load -> calibrate -> score -> allocate -> prune -> save -> perplexity.

Thin: each step is one call into ecoflap_core, plugins or evaluation.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ecoflap.core.adapters import LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.compress import Methods, PruneResult, compress, select_towers
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.plugins import Registries
from ecoflap.core.progress import ProgressFactory


@dataclass(frozen=True)
class EvalOptions:
    """What ``ecoflap prune`` measures: held-out perplexity for language models, easy-vqa accuracy
    for visual question answerers (``dense_perplexity``: the dense model too, before pruning)."""

    perplexity: bool = True
    dense_perplexity: bool = False
    ppl_tokens: int = 16384
    ppl_seqlen: int = 512
    vqa_questions: int = 300


def tqdm_progress(*, total: int, desc: str) -> Any:
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)


def resolve_model(registries: Registries, source: str) -> ModelSpec:
    """A registered model name, or a local folder that some adapter recognises."""
    if source in registries.models:
        return registries.models.get(source)
    path = Path(source).expanduser()
    if path.exists():
        for entry in registries.models.entries():
            if entry.obj.matches is not None and entry.obj.matches(path):
                return entry.obj
        raise EcoflapError(f"no model adapter recognises the folder {path} (is config.json there?)")
    raise EcoflapError(
        f"model {source!r} is neither a registered model nor an existing folder."
        + registries.models.suggestions(source)
    )


def load_model(registries: Registries, config: PruneConfig) -> ModelAdapter:
    spec = resolve_model(registries, config.model)
    return spec.load(LoadOptions(config.model, config.targets, config.ignore, config.dtype, {"seed": config.seed}))


def resolve_methods(registries: Registries, config: PruneConfig) -> Methods:
    """Plugin names -> instances, failing early (before any model is loaded) on unknown names."""
    allocator_cls = registries.allocators.get(config.allocator)
    pruner = registries.pruners.get(config.pruner)
    scorer = None
    if allocator_cls.needs_scores:
        scorer = registries.scorers.get(config.scorer)(
            eps=config.zo_eps,
            num_noise=config.zo_noise,
            seed=config.seed,
            micro_batch=config.micro_batch,
            group_size=config.zo_group,
            level=config.zo_level,
            variant=config.fo_variant,
        )
    options = {"path": config.allocation_file} if config.allocator == "from-file" else {}
    if config.pattern and allocator_cls.needs_scores:
        raise EcoflapError(f"N:M sparsity ({config.nm}) is the same in every layer: use --allocator uniform")
    return Methods(scorer, allocator_cls(**options), pruner)


def calibration_texts(corpus: str) -> tuple[list[str], list[str]]:
    from ecoflap.core.datasets.corpora import load_corpus, split_corpus

    return split_corpus(load_corpus(corpus))


IMAGE_TEXT_SOURCES = ("easy-vqa",)


def calibration_data(adapter: ModelAdapter, corpus: str) -> tuple[list[Any], list[str] | None]:
    """(calibration data, held-out texts): texts for language models; (image, caption) pairs for
    image-text models (easy-vqa's training images with their captions; no held-out text)."""
    if getattr(adapter, "calibration_data", "text") == "text":
        return calibration_texts(corpus)
    source = "easy-vqa" if corpus == "wikipedia" else corpus
    if source not in IMAGE_TEXT_SOURCES:
        raise EcoflapError(
            f"{adapter.model_id} calibrates on image-caption pairs: "
            f"--corpus must be one of {', '.join(IMAGE_TEXT_SOURCES)}"
        )
    from ecoflap.core.datasets.easy_vqa import image_caption_pairs

    return image_caption_pairs("train"), None


def evaluate_perplexity(adapter: ModelAdapter, texts: list[str], options: EvalOptions) -> dict[str, Any]:
    from ecoflap.evaluation.perplexity import perplexity

    model, tokenizer = (
        adapter.language_model() if hasattr(adapter, "language_model") else (adapter.model, adapter.tokenizer)
    )
    return perplexity(
        model,
        tokenizer,
        texts,
        max_length=options.ppl_seqlen,
        limit_tokens=options.ppl_tokens,
    )


def versions() -> dict[str, str]:
    names = ["ecoflap", "torch", "transformers", "lm-eval", "pluggy", "pydantic"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found | {"python": platform.python_version()}


def run_prune(
    registries: Registries,
    config: PruneConfig,
    output: Path | None,
    evaluation: EvalOptions,
    progress: ProgressFactory = tqdm_progress,
    log: Any = print,
) -> dict[str, Any]:
    """The whole job; returns the report that is also written to ``output/report.json``."""
    torch.manual_seed(config.seed)
    methods = resolve_methods(registries, config)
    t0 = time.perf_counter()
    adapter = load_model(registries, config)
    log(
        f"loaded {adapter.model_id}: {adapter.describe()['prunable_parameters']:,} prunable weights "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    select_towers(adapter.towers(), config.towers)  # an unknown tower name fails before any work
    calib_texts, heldout = calibration_data(adapter, config.corpus)
    measure = _measurement(adapter, heldout, evaluation)
    fine_batch = adapter.calibration_batch(calib_texts, config.nsamples, config.seqlen, config.seed)
    score_batch = _score_batch(adapter, config, calib_texts, fine_batch) if methods.scorer else None
    report: dict[str, Any] = {"config": config.model_dump(), "model": adapter.describe(), "versions": versions()}
    if measure and ecoflap.evaluation.dense_perplexity:
        report |= measure("dense", log)
    result = compress(adapter, config, methods, fine_batch, score_batch, progress)
    report |= _result_report(result, methods)
    log(f"measured sparsity {result.measured.overall():.4f} (target {config.target})")
    if measure:
        report |= measure("pruned", log)
    if output is not None:
        save_outputs(adapter, result, report, output)
        log(f"saved the pruned model, allocation.json and report.json to {output}")
    return report


def _measurement(adapter: ModelAdapter, heldout: list[str] | None, evaluation: EvalOptions) -> Any:
    """The quality measure of this kind of model (None when there is none or it is switched off)."""
    from ecoflap.core.capabilities import VisualQuestionAnswerer

    if not ecoflap.evaluation.perplexity:
        return None
    if isinstance(adapter, VisualQuestionAnswerer) and ecoflap.evaluation.vqa_questions > 0:
        from ecoflap.core.datasets.easy_vqa import question_sample, vqa_scores

        sample = question_sample(ecoflap.evaluation.vqa_questions, seed=0)

        def vqa(stage: str, log: Any) -> dict[str, Any]:
            scores = vqa_scores(adapter, sample)
            log(f"{stage} easy-vqa accuracy: {_vqa_line(scores)}")
            return {"dense_vqa" if stage == "dense" else "vqa": scores}

        return vqa
    if heldout is not None and hasattr(adapter, "tokenizer"):

        def ppl(stage: str, log: Any) -> dict[str, Any]:
            scores = evaluate_perplexity(adapter, heldout, evaluation)
            log(f"{stage} perplexity: {_ppl_line(scores)}")
            return {"dense_perplexity" if stage == "dense" else "perplexity": scores}

        return ppl
    return None


def _vqa_line(scores: dict[str, Any]) -> str:
    return (
        f"generate {scores['vqa_generate']:.3f} (yes/no {scores['vqa_generate_yes_no']:.3f}, other "
        f"{scores['vqa_generate_other']:.3f}), rank {scores['vqa_rank']:.3f}, invalid {scores['invalid_rate']:.3f} "
        f"({scores['n_questions']} questions)"
    )


def _score_batch(adapter: ModelAdapter, config: PruneConfig, texts: list[str], fine: Any) -> Any:
    if (config.score_nsamples, config.score_seqlen) == (config.nsamples, config.seqlen):
        return fine
    return adapter.calibration_batch(texts, config.score_nsamples, config.score_seqlen, config.seed)


def _result_report(result: PruneResult, methods: Methods) -> dict[str, Any]:
    return result.summary() | {
        "methods": {
            "scorer": methods.scorer.name if methods.scorer else None,
            "allocator": methods.allocator.name,
            "pruner": methods.pruner.name,
        },
        "scores": result.scores,
        "allocation": result.allocation.sparsity,
    }


def _ppl_line(ppl: dict[str, Any]) -> str:
    return f"word {ppl['word_perplexity']:.2f}, token {ppl['token_perplexity']:.2f} ({ppl['n_tokens']} tokens)"


def save_outputs(adapter: ModelAdapter, result: PruneResult, report: dict[str, Any], output: Path) -> None:
    """The pruned model in the Hugging Face layout, its allocation and the run report.

    Written into a sibling temporary folder that replaces ``output`` only once complete, so an
    interrupted save never leaves a half-written model where a finished one was.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        adapter.save(staging)
        result.allocation.save(staging / "allocation.json")
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=str))
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
