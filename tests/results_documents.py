"""Results documents (INTERFACES.md section 1) for the results-database tests."""

from __future__ import annotations

from typing import Any

DEFAULT_METHOD: dict[str, Any] = {
    "pruner": "wanda",
    "pruner_options": {"comparison": "auto"},
    "nm": None,
    "scorer": "zeroth-order",
    "scorer_options": {"zo_eps": 0.001, "zo_noise": 1, "zo_group": 1, "zo_level": "sampled", "zo_difference": "forward",
                       "zo_variant": "weight-scaled"},
    "allocator": "ecoflap",
    "allocator_options": {"smooth_blocks": 5},
    "allocation_file": None,
    "granularity": "block",
    "aggregation": "sum",
    "max_sparsity": 0.6,
    "per_tower": False,
    "towers": [],
    "targets": [],
    "ignore": [],
    "calibration": {"corpus": "wikipedia", "nsamples": 32, "seqlen": 512, "score_nsamples": 8, "score_seqlen": 128,
                    "seed": 42},
}  # fmt: skip


def method(**changes: Any) -> dict[str, Any]:
    """The default job's method block (the schema of ``ecoflap.method``) with ``changes``; as the writer does, the
    smoothing option only where zeroth-order scores feed ecoflap (unless ``changes`` name it)."""
    block = DEFAULT_METHOD | changes
    if "allocator_options" not in changes and (block["allocator"], block["scorer"]) != ("ecoflap", "zeroth-order"):
        del block["allocator_options"]
    return block


def document(
    key: str,
    metrics: dict[str, dict[str, Any]] | None = None,
    *,
    model: str = "mini",
    dense: bool = False,
    pruner: str | None = "wanda",
    scorer: str | None = "zeroth-order",
    allocator: str | None = "ecoflap",
    sparsity: float = 0.5,
    layers: int = 3,
    writer: int = 0,
    method: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A document; ``metrics``: {task: {metric: value or (value, stderr)}}; acc is higher-, loss lower-is-better.

    ``method``: the ``ecoflap.method`` block (its names replace pruner, scorer and allocator); none: an older document.
    """
    metrics = metrics if metrics is not None else {"vqa": {"acc": (0.8, 0.01), "invalid_rate": 0.02}}
    results: dict[str, dict[str, Any]] = {}
    for task, values in metrics.items():
        results[task] = {"alias": task}
        for name, value in values.items():
            value, stderr = value if isinstance(value, tuple) else (value, "N/A")
            results[task] |= {f"{name},none": value, f"{name}_stderr,none": stderr}
    if method is not None:
        pruner, scorer, allocator = method["pruner"], method["scorer"], method["allocator"]
    if dense:
        pruner = scorer = allocator = method = None
        sparsity = 0.0
    doc = {
        "results": results,
        "configs": {task: {"task": task, "limit": None} for task in metrics},
        "versions": {task: "1.0" for task in metrics},
        "n-samples": {task: {"original": 100, "effective": 100} for task in metrics},
        "higher_is_better": {task: {m: not m.endswith(("rate", "loss")) for m in v} for task, v in metrics.items()},
        "config": {"model": model, "limit": None, "seed": 1234},
        "date": 1764345600.0,
        "git_hash": "5aae9fd",
        "ecoflap": {
            "run_key": key,
            "model": model,
            "model_hash": None,
            "checkpoint": None if dense else f"runs/{key}",
            "dense": dense,
            "pruner": pruner,
            "scorer": scorer,
            "allocator": allocator,
            "target_sparsity": sparsity,
            "measured_sparsity": sparsity - 0.001 if sparsity else 0.0,
            "allocation": [
                {
                    "layer": f"blocks.{i}.fc",
                    "tower": "text",
                    "block": f"blocks.{i}",
                    "target": sparsity,
                    "measured": sparsity,
                    "params": 1000 + writer,
                }
                for i in range(layers)
            ],  # fmt: skip
            "calibration": {"data": "toy", "nsamples": 4, "seqlen": 16},
            "seeds": {"calibration": 42, "eval": 1234},
            "versions": {"ecoflap": "0.1.0"},
            "timings_s": {"eval": 1.5},
            "peak_memory_mb": 12.5,
            "status": "complete",
        },
    }
    return doc | {"ecoflap": doc["ecoflap"] | {"method": method}} if method is not None else doc


def lm_eval_results(
    word_perplexity: float = 37.52,
    acc: float = 0.4369,
    model_args: Any = "pretrained=EleutherAI/pythia-160m,dtype=float32",
    model_name: str | None = "EleutherAI/pythia-160m",
) -> dict[str, Any]:
    """A results file as ``lm_eval --output_path`` 0.4.13 writes it (``results_<date>.json``): no ``ecoflap`` block.

    The keys are those of lm-eval's ``simple_evaluate`` (``lm_eval/result_schema.py``) and its
    ``EvaluationTracker.save_results_aggregated`` (``task_hashes`` and the general config tracker's fields);
    ``model_name=None`` leaves the tracker's fields out, as ``simple_evaluate``'s own return value has them.
    """
    results = {
        "results": {
            "arc_easy": {
                "name": "arc_easy", "alias": "arc_easy", "sample_len": 2376,
                "acc,none": acc, "acc_stderr,none": 0.010178,
                "acc_norm,none": 0.4023, "acc_norm_stderr,none": 0.010061,
            },
            "wikitext": {
                "name": "wikitext", "alias": "wikitext", "sample_len": 62,
                "word_perplexity,none": word_perplexity, "word_perplexity_stderr,none": "N/A",
                "byte_perplexity,none": 1.9625, "byte_perplexity_stderr,none": "N/A",
                "bits_per_byte,none": 0.9727, "bits_per_byte_stderr,none": "N/A",
            },
        },
        "group_subtasks": {"arc_easy": [], "wikitext": []},
        "configs": {
            "arc_easy": {
                "task": "arc_easy", "tag": ["ai2_arc"], "dataset_path": "allenai/ai2_arc", "dataset_name": "ARC-Easy",
                "training_split": "train", "validation_split": "validation", "test_split": "test",
                "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{choices.label.index(answerKey)}}",
                "doc_to_choice": "{{choices.text}}", "description": "", "target_delimiter": " ",
                "fewshot_delimiter": "\n\n", "num_fewshot": 0,
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
                "output_type": "multiple_choice", "repeats": 1, "should_decontaminate": True,
                "doc_to_decontamination_query": "Question: {{question}}\nAnswer:", "metadata": {"version": 1.0},
            },
            "wikitext": {
                "task": "wikitext", "dataset_path": "EleutherAI/wikitext_document_level",
                "dataset_name": "wikitext-2-raw-v1", "training_split": "train", "validation_split": "validation",
                "test_split": "test", "doc_to_text": "", "doc_to_target": "<function wikitext_detokenizer>",
                "description": "", "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": 0,
                "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                                {"metric": "bits_per_byte"}],
                "output_type": "loglikelihood_rolling", "repeats": 1, "should_decontaminate": True,
                "doc_to_decontamination_query": "{{page}}", "metadata": {"version": 2.0},
            },
        },
        "versions": {"arc_easy": 1.0, "wikitext": 2.0},
        "n-shot": {"arc_easy": 0, "wikitext": 0},
        "higher_is_better": {
            "arc_easy": {"acc": True, "acc_norm": True},
            "wikitext": {"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False},
        },
        "n-samples": {"wikitext": {"original": 62, "effective": 62}, "arc_easy": {"original": 2376, "effective": 2376}},
        "config": {
            "model": "hf", "model_args": model_args, "model_num_parameters": 162322944, "model_dtype": "torch.float32",
            "model_revision": "main", "model_sha": "50f5173d932e8e61f858120bcb800b97af589f46", "batch_size": "8",
            "batch_sizes": [], "device": "cuda:0", "use_cache": None, "limit": None, "bootstrap_iters": 100000,
            "gen_kwargs": None, "random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234,
        },
        "git_hash": "8bc4620",
        "date": 1733011200.5,
        "pretty_env_info": "PyTorch version: 2.5.1+cu124\nIs debug build: False\n...",
        "transformers_version": "4.46.3",
        "lm_eval_version": "0.4.13",
        "upper_git_hash": None,
        "tokenizer_pad_token": ["<|endoftext|>", "0"],
        "tokenizer_eos_token": ["<|endoftext|>", "0"],
        "tokenizer_bos_token": ["<|endoftext|>", "0"],
        "eot_token_id": 0,
        "max_length": 2048,
    }  # fmt: skip
    if model_name is None:
        return results
    return results | {
        "task_hashes": {},
        "model_source": "hf",
        "model_name": model_name,
        "model_name_sanitized": model_name.replace("/", "__"),
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": False,
        "chat_template": None,
        "chat_template_sha": None,
        "start_time": 1520.4361,
        "end_time": 1893.0122,
        "total_evaluation_time_seconds": "372.5761",
    }
