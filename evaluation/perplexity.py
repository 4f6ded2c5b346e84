"""WikiText-style perplexity of an in-memory causal LM through lm-eval's ``loglikelihood_rolling``.

The texts go to a temporary JSONL file read by a local task definition (``dataset_path: json``),
so the run is offline and lm-eval computes word / byte perplexity and bits per byte exactly as
for its own ``wikitext`` task. Token perplexity comes from the same per-document
log-likelihoods divided by the number of predicted tokens (every token of every document: the
first one is predicted from the prefix token, BOS or else EOS).

Deliberate differences from a plain ``lm_eval --tasks wikitext`` run:
- ``add_bos_token=False``: lm-eval's rolling windows already start from the prefix token; a
  tokenizer that adds BOS itself (LLaMA's) would otherwise make lm-eval score BOS given BOS.
- ``doc_to_target: text`` (the field) rather than ``"{{text}}"``: lm-eval parses a rendered
  template that looks like ``[...]`` as a Python literal.
- one progress bar over all rolling windows (the caller's), not lm-eval's one per batch of windows.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.errors import EcoflapError
from ecoflap.core.progress import ProgressFactory, no_progress
from ecoflap.core.provenance import git_hash

TASK = "ecoflap_heldout_ppl"
METRICS = {  # metric -> aggregation, as lm-eval's own wikitext task gets them by default
    "word_perplexity": "weighted_perplexity",
    "byte_perplexity": "weighted_perplexity",
    "bits_per_byte": "bits_per_byte",
}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_NOISE = (  # lm-eval's warnings about passing a model object, which is what we mean to do
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_length: int = 512,
    batch_size: int = 1,
    limit_tokens: int | None = None,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Word / byte / token perplexity and bits per byte of a causal LM on texts (rolling windows)."""
    if max_length < 2 or batch_size < 1:
        raise EcoflapError(
            f"perplexity needs windows of 2 or more tokens and batches of 1 or more, not {max_length} and {batch_size}"
        )
    texts = _checked_texts(texts)
    if limit_tokens is not None:
        texts = limit_texts(texts, tokenizer, limit_tokens)
    with _offline(), _quiet_logging(), _own_git_hash(), _eval_mode(model), torch.no_grad():
        lm = _hflm(model, tokenizer, max_length, batch_size, progress)
        with tempfile.TemporaryDirectory(prefix="ecoflap-ppl-") as folder:
            out = _run_task(lm, texts, Path(folder))
        return summarise(out, texts, lm.tok_encode, max_length)


# --------------------------------------------------------------------------- inputs


def _checked_texts(texts: list[str]) -> list[str]:
    """The texts stripped of outer whitespace, blank ones dropped; an error when none is left."""
    if isinstance(texts, str):
        raise EcoflapError("perplexity takes a list of texts, not one string")
    kept = [text.strip() for text in texts if text and text.strip()]
    if not kept:
        raise EcoflapError("perplexity needs at least one non-empty text")
    return kept


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of a text without special tokens (what the rolling windows predict)."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def limit_texts(texts: list[str], tokenizer: Any, limit_tokens: int) -> list[str]:
    """Whole texts from the start until about `limit_tokens` tokens; the last cut at a word boundary."""
    if limit_tokens < 1:
        raise EcoflapError(f"limit_tokens must be a positive number of tokens, not {limit_tokens}")
    kept, total = [], 0
    for text in texts:
        n_tokens = count_tokens(tokenizer, text)
        if total + n_tokens > limit_tokens:
            head = _head_within(text, tokenizer, limit_tokens - total)
            return kept + [head] if head else kept
        kept.append(text)
        total += n_tokens
    return kept


def _head_within(text: str, tokenizer: Any, budget: int) -> str:
    """The longest run of whole words from the start of a text that fits in `budget` tokens."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    low, high = 0, len(ends)  # invariant: the first `low` words fit
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(tokenizer, text[: ends[middle - 1]]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[: ends[low - 1]] if low else ""


# --------------------------------------------------------------------------- lm-eval run


def task_config(data_file: Path, cache_dir: Path) -> dict[str, Any]:
    """A local lm-eval task: rolling log-likelihood over the "text" field of a JSONL file."""
    return {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [
            {"metric": name, "aggregation": aggregation, "higher_is_better": False}
            for name, aggregation in METRICS.items()
        ],
        "metadata": {"version": 1.0},
    }


def write_task(folder: Path, texts: list[str]) -> None:
    """Write the texts as JSONL and the task YAML next to them."""
    import yaml

    data_file = folder / "heldout.jsonl"
    lines = (json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
    data_file.write_text("".join(lines), encoding="utf-8")
    config = task_config(data_file, folder / "datasets-cache")
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _run_task(lm: Any, texts: list[str], folder: Path) -> dict[str, Any]:
    """simple_evaluate on the local task only; no stderr bootstrap, the caller's seeds untouched."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    write_task(folder, texts)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    seeds = {"random_seed": None, "numpy_random_seed": None, "torch_random_seed": None}
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0, **seeds
    )
    if not out or TASK not in out.get("results", {}):
        raise EcoflapError("lm-eval returned no perplexity results")
    return out


def _hflm(model: Any, tokenizer: Any, max_length: int, batch_size: int, progress: ProgressFactory | None = None) -> Any:
    """lm-eval's HFLM around the model object as it is (same device and dtype, not copied)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        """HFLM with one bar over all rolling windows (``progress``) instead of lm-eval's one per batch of them."""

        windows: Any = None  # the bar of the rolling windows while they are scored

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
            texts = [request.args[0] for request in requests]
            total = sum(max(1, math.ceil(len(self.tok_encode(text)) / self.max_length)) for text in texts)
            self.windows = (progress or no_progress)(total=total, desc="perplexity windows")
            try:
                return super().loglikelihood_rolling(requests, True)
            finally:
                self.windows.close()
                self.windows = None

        def _loglikelihood_tokens(
            self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None
        ) -> list:
            scored = super()._loglikelihood_tokens(requests, disable_tqdm or self.windows is not None, override_bs)
            if self.windows is not None:
                self.windows.update(len(requests))
            return scored

    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)  # HFLM sets a pad token: leave the caller's alone
    return QuietHFLM(
        pretrained=model,
        tokenizer=tokenizer,
        max_length=max_length,
        batch_size=batch_size,
        add_bos_token=False,
    )


def summarise(out: dict[str, Any], texts: list[str], encode: Any, max_length: int) -> dict[str, Any]:
    """lm-eval's metrics plus token perplexity from the per-document log-likelihoods."""
    metrics = out["results"][TASK]
    loglikelihoods = document_loglikelihoods(out["samples"][TASK])
    if len(loglikelihoods) != len(texts):
        raise EcoflapError(f"lm-eval scored {len(loglikelihoods)} of {len(texts)} documents")
    n_tokens = sum(len(encode(text)) for text in texts)
    summary = {name: float(metrics[f"{name},none"]) for name in METRICS}
    return summary | {
        "token_perplexity": math.exp(-sum(loglikelihoods) / n_tokens),
        "n_documents": len(texts),
        "n_tokens": n_tokens,
        "n_words": sum(len(re.split(r"\s+", text)) for text in texts),
        "n_bytes": sum(len(text.encode("utf-8")) for text in texts),
        "loglikelihood": float(sum(loglikelihoods)),
        "max_length": max_length,
    }


def document_loglikelihoods(samples: list[dict[str, Any]]) -> list[float]:
    """Each document's summed log-likelihood, in document order, from lm-eval's logged samples."""
    ordered = sorted(samples, key=lambda sample: sample["doc_id"])
    return [float(_scalar(sample["filtered_resps"])) for sample in ordered]


def _scalar(value: Any) -> float:
    """The one number inside lm-eval's (possibly nested) response lists."""
    while isinstance(value, (list, tuple)):
        value = value[0]
    return float(value)


# --------------------------------------------------------------------------- environment


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF hub and datasets offline for the run (unless the caller set these variables)."""
    previous = {name: os.environ.get(name) for name in _OFFLINE}
    os.environ.update({name: previous[name] or value for name, value in _OFFLINE.items()})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)


class _DropNoise(logging.Filter):
    """Drops lm-eval's expected warnings about being given a model object."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """lm-eval and datasets at WARNING (no INFO chatter, no dataset progress bars) for the run."""
    import datasets.utils as datasets_utils

    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in loggers]
    noise = _DropNoise()
    bars_were_on = not datasets_utils.are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    hflm_logger = logging.getLogger("lm_eval.models.huggingface")
    hflm_logger.addFilter(noise)
    datasets_utils.disable_progress_bars()
    try:
        yield
    finally:
        hflm_logger.removeFilter(noise)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars_were_on:
            datasets_utils.enable_progress_bars()


@contextlib.contextmanager
def _own_git_hash() -> Iterator[None]:
    """lm-eval's results would record the git hash of the *current folder*, read by a ``git describe`` whose
    stderr reaches the terminal (``fatal: not a git repository`` outside a checkout). They carry ecoflap's own
    commit instead, read quietly by ``provenance.git_hash``. lm-eval has no option for this, so its function
    is replaced for the run: the one place where ecoflap patches lm-eval."""
    from unittest import mock

    import lm_eval.evaluator

    with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", git_hash):
        yield


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode for the run, its training flag restored afterwards."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
