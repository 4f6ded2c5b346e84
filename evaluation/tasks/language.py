"""Language tasks through lm-eval on the in-memory (pruned) model: MMLU (5-shot) and WikiText perplexity."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import Metric, Task, TaskOptions, TaskResult
from ecoflap.evaluation.tasks.base import arg, data_folder

PREFIX = "ecoflap_mmlu_"
#: lm-eval's own MMLU prompt (tasks/mmlu/default/_default_template_yaml)
MMLU_PROMPT = (
    "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
)


class MmluTask(Task):
    """MMLU accuracy per subject and averaged, k-shot from the dev split, through lm-eval's multiple_choice."""

    name = "mmlu"
    capability = "language-model"
    metrics = (Metric("acc"), Metric("acc_macro"))
    description = "MMLU 5-shot accuracy via lm-eval [281 dev questions from the lm-eval wheel]"

    @classmethod
    def load(cls, options: TaskOptions) -> tuple[dict[str, list[Any]], str, bool]:
        from ecoflap.evaluation.datasets.text import read_mmlu

        folder, description, default = data_folder(cls.name, options)
        splits = read_mmlu(folder)
        wanted = [s.strip() for s in str(options.extra.get("subjects", "")).split(",") if s.strip()]
        if wanted:
            known = {q.subject for q in splits["dev"]}
            unknown = [s for s in wanted if s not in known]
            if unknown:
                raise EcoflapError(f"mmlu: unknown subject {unknown[0]!r}; the data has {', '.join(sorted(known))}")
            splits = {name: [q for q in qs if q.subject in wanted] for name, qs in splits.items()}
        return splits, description, default

    @classmethod
    def describe_data(cls, options: TaskOptions) -> str:
        splits, description, _ = cls.load(options)
        sizes = ", ".join(f"{name} {len(qs)}" for name, qs in splits.items())
        return f"{description}: {sizes} questions over {len({q.subject for q in splits['dev']})} subjects"

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        splits, description, _ = self.load(options)
        eval_split = next(s for s in ("test", "val", "dev") if s in splits)
        shots = arg(options, "num_fewshot", 5, int)
        model, tokenizer = adapter.language_model()
        with tempfile.TemporaryDirectory(prefix="ecoflap-mmlu-") as folder:
            plan = write_mmlu_tasks(Path(folder), splits, eval_split, shots)
            out = _simple_evaluate(model, tokenizer, Path(folder), list(plan), options)
        return mmlu_result(self, out, plan, {"data": description, "eval_split": eval_split, "num_fewshot": shots})


def write_mmlu_tasks(folder: Path, splits: dict[str, list[Any]], eval_split: str, shots: int) -> dict[str, int]:
    """One lm-eval task YAML per subject (its dev and eval questions as JSONL); returns task -> shots used.

    With no test split the dev questions are evaluated leave-one-out: lm-eval drops every copy of the
    evaluated question from its few-shot pool, so a subject gets at most as many shots as its smallest
    such pool (n - 1, or fewer where the dev split repeats a question, as college_physics does).
    """
    import yaml

    plan = {}
    for subject in sorted({q.subject for q in splits["dev"]}):
        if not any(q.subject == subject for q in splits[eval_split]):
            continue
        files = {}
        for split in {"dev", eval_split}:
            files[split] = folder / f"{subject}_{split}.jsonl"
            rows = [json.dumps(q.record(), ensure_ascii=False) for q in splits[split] if q.subject == subject]
            files[split].write_text("\n".join(rows) + "\n", encoding="utf-8")
        used = min(shots, fewshot_pool(splits, subject, eval_split))
        plan[PREFIX + subject] = used
        config = mmlu_config(subject, {k: str(v) for k, v in files.items()}, eval_split, used, folder / "cache")
        (folder / f"{PREFIX}{subject}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return plan


def fewshot_pool(splits: dict[str, list[Any]], subject: str, eval_split: str) -> int:
    """The fewest few-shot examples lm-eval's ``first_n`` sampler can give any evaluated question of ``subject``."""
    dev = [q.record() for q in splits["dev"] if q.subject == subject]
    if eval_split != "dev":  # lm-eval removes the evaluated question only when it samples from its own split
        return len(dev)
    return min(sum(other != doc for other in dev) for doc in dev)


def mmlu_config(subject: str, files: dict[str, str], eval_split: str, shots: int, cache: Path) -> dict[str, Any]:
    """lm-eval's MMLU task definition (default template) over local JSONL files."""
    topic = subject.replace("_", " ")
    return {
        "task": PREFIX + subject,
        "task_alias": subject,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache)},
        "test_split": eval_split,
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": shots,
        "output_type": "multiple_choice",
        "description": f"The following are multiple choice questions (with answers) about {topic}.\n\n",
        "doc_to_text": MMLU_PROMPT,
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def _simple_evaluate(model: Any, tokenizer: Any, folder: Path, tasks: list[str], options: TaskOptions) -> dict:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from ecoflap.evaluation.perplexity import _eval_mode, _hflm, _offline, _own_git_hash, _quiet_logging

    max_length = int(arg(options, "max_length", _model_max_length(model), int))
    with _offline(), _quiet_logging(), _own_git_hash(), _eval_mode(model), torch.no_grad():
        lm = _hflm(model, tokenizer, max_length, arg(options, "batch_size", 1, int))
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        try:
            return lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=options.limit, random_seed=options.seed,
                numpy_random_seed=options.seed, torch_random_seed=options.seed, fewshot_random_seed=options.seed,
            )  # fmt: skip
        except AssertionError as exc:  # lm-eval checks its inputs with asserts ("Error: ...")
            message = str(exc).removeprefix("Error: ").splitlines()[0] if str(exc) else "an internal check failed"
            raise EcoflapError(f"lm-eval rejected the task: {message}") from None


def _model_max_length(model: Any) -> int:
    config = getattr(model, "config", None)
    return min(int(getattr(config, "max_position_embeddings", 2048) or 2048), 2048)


def mmlu_result(task: Task, out: dict, plan: dict[str, int], config: dict[str, Any]) -> TaskResult:
    """Per-subject accuracy (as lm-eval sub-tasks) and the size-weighted (lm-eval's group) and plain means."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    from ecoflap.evaluation.results.document import metric_number

    accs, stderrs, sizes, subtasks = [], [], [], {}
    for name, shots in plan.items():
        values, n = out["results"][name], int(out["n-samples"][name]["effective"])
        accs.append(float(values["acc,none"]))
        stderrs.append(metric_number(values["acc_stderr,none"]))  # lm-eval writes "N/A" for one sample
        sizes.append(n)
        subtasks[name.removeprefix(PREFIX)] = {"acc": accs[-1], "acc_stderr": stderrs[-1], "n": n, "n-shot": shots}
    metrics = {
        "acc": aggregate_subtask_metrics(accs, sizes),
        "acc_macro": aggregate_subtask_metrics(accs, sizes, False),
    }
    if None in stderrs or sum(sizes) <= len(sizes):  # no spread to pool
        pooled = stderrs[0] if len(sizes) == 1 else None
    else:
        pooled = pooled_sample_stderr(stderrs, sizes)
    stderr = {"acc": pooled, "acc_macro": None}
    config = config | {"subtasks": subtasks, "n_subjects": len(plan)}
    return TaskResult(task.name, task.version, metrics, stderr, sum(sizes), config)


def default_wikipedia(split: str) -> tuple[list[str], str]:
    """The shipped Wikipedia articles of a split: test = the held-out articles (never calibration), validation =
    every 10th calibration-side article (for choosing settings; calibration windows may overlap it)."""
    from ecoflap.core.datasets.corpora import split_corpus, wikipedia_articles

    calibration, heldout = split_corpus(wikipedia_articles())
    if split == "test":
        return heldout, "held-out Wikipedia articles (gensim test data)"
    return split_corpus(calibration)[1], "calibration-side Wikipedia articles (gensim test data), validation"


class WikitextTask(Task):
    """Word / byte / token perplexity and bits per byte through lm-eval's loglikelihood_rolling."""

    name = "wikitext"
    capability = "language-model"
    metrics = tuple(
        Metric(m, higher_is_better=False)
        for m in ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity")
    )
    description = (
        "WikiText-2 raw perplexity via lm-eval [held-out Wikipedia articles shipped with gensim]; "
        "task arg split=test|validation (the default data's validation: every 10th calibration-side article)"
    )

    @classmethod
    def load(cls, options: TaskOptions) -> tuple[list[str], str]:
        from ecoflap.evaluation.datasets.text import WIKITEXT_FILES, read_wikitext

        split = arg(options, "split", "test")
        if split not in WIKITEXT_FILES:
            raise EcoflapError(f"task argument split={split!r} must be one of {', '.join(WIKITEXT_FILES)}")
        given = options.extra.get("data") or options.data_dir
        if given is None:
            return default_wikipedia(split)
        folder, description, _ = data_folder(cls.name, options)
        return read_wikitext(folder, split), description if split == "test" else f"{description} ({split})"

    @classmethod
    def describe_data(cls, options: TaskOptions) -> str:
        documents, description = cls.load(options)
        return f"{description}: {len(documents)} documents"

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        from ecoflap.evaluation.perplexity import perplexity

        documents, description = self.load(options)
        documents = documents if options.limit is None else documents[: options.limit]
        model, tokenizer = adapter.language_model()
        max_length = arg(options, "max_length", 512, int)
        tokens = arg(options, "tokens", None, int)
        result = perplexity(model, tokenizer, documents, max_length, limit_tokens=tokens, progress=options.progress)
        metrics = {m.name: float(result[m.name]) for m in self.metrics}
        config = {"data": description, "max_length": max_length, "n_tokens": result["n_tokens"],
                  "n_words": result["n_words"], "n_bytes": result["n_bytes"]}  # fmt: skip
        return TaskResult(self.name, self.version, metrics, dict.fromkeys(metrics), result["n_documents"], config)
