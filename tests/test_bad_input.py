"""Every bad input is one ``Error:`` line, exit status 1, no traceback, and nothing written.

One table of (command line, the message it must give). ``{name}`` in a command line is an input file
or folder that ``INPUTS[name]`` makes in the test's temporary folder; the run cache, the cache and the
results database point there too, so "nothing written" is "the temporary folder is unchanged". Every
case fails before any model loads (no Prefect flow starts), so the table runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from ecoflap.pipelines.cli import cli

PRUNE = ["prune", "--model", "tiny-llama", "--no-eval"]
RUN = ["run", "--model", "tiny-llama"]
EVAL = ["eval", "--model", "tiny-llama"]
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


# ---- inputs: each makes one file or folder under the test's temporary folder --------------------------
def _text(content: str | bytes, name: str) -> Callable[[Path, Path], Path]:
    def make(tmp: Path, model: Path) -> Path:
        path = tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return make


def _folder(tmp: Path, model: Path) -> Path:
    path = tmp / "inputs" / "folder"
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.md").write_text("not a corpus")
    return path


def _model(damage: Callable[[Path], object]) -> Callable[[Path, Path], Path]:
    """A copy of a saved tiny-llama folder, damaged."""

    def make(tmp: Path, model: Path) -> Path:
        path = tmp / "inputs" / "model"
        shutil.copytree(model, path)
        damage(path)
        return path

    return make


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | changes))

    return edit


def _checkpoint(report: Callable[[dict], object] | str) -> Callable[[Path, Path], Path]:
    """A pruned checkpoint (the tiny model's folder) whose report.json is damaged."""

    def make(tmp: Path, model: Path) -> Path:
        path = tmp / "inputs" / "checkpoint"
        shutil.copytree(model, path)
        text = report if isinstance(report, str) else json.dumps(report(_REPORT))
        (path / "report.json").write_text(text)
        return path

    return make


def _vqa(damage: Callable[[dict, dict], object] | None = None, image: bytes | None = None):
    """A VQAv2 folder of two questions, its JSON damaged (or one image replaced by ``image`` bytes)."""

    def make(tmp: Path, model: Path) -> Path:
        folder = tmp / "inputs" / "data" / "vqa"
        (folder / "images").mkdir(parents=True)
        questions = {"questions": [{"question_id": i, "image_id": i, "question": "what colour?"} for i in (0, 1)]}
        answers = [[{"answer": c, "answer_id": k} for k in range(10)] for c in ("red", "blue")]
        annotations = {"annotations": [{"question_id": i, "image_id": i, "answers": answers[i]} for i in (0, 1)]}
        for i, colour in enumerate(["red", "blue"]):
            Image.new("RGB", (8, 8), colour).save(folder / "images" / f"{i}.png")
        if image is not None:
            (folder / "images" / "1.png").write_bytes(image)
        if damage is not None:
            damage(questions, annotations)
        (folder / "questions.json").write_text(json.dumps(questions))
        (folder / "annotations.json").write_text(json.dumps(annotations))
        return folder.parent

    return make


_REPORT = {
    "config": {"model": "tiny-llama", "sparsity": 0.5},
    "method": {"pruner": "wanda"},
    "model_hash": "0" * 64,
    "layers": [{"name": "l.0", "size": 16, "block": "b.0", "tower": "language"}],
    "allocation": {"l.0": 0.5},
    "measured_per_layer": {"l.0": 0.5},
    "measured_sparsity": 0.5,
}


def _set(key: str, value: object, which: int = 0) -> Callable[[dict, dict], None]:
    def damage(questions: dict, annotations: dict) -> None:
        target, record = key.split(".", 1)
        records = questions["questions"] if target == "q" else annotations["annotations"]
        records[which][record] = value

    return damage


def _null_answer(questions: dict, annotations: dict) -> None:
    annotations["annotations"][1]["answers"][3]["answer"] = None


INPUTS: dict[str, Callable[[Path, Path], Path]] = {
    # config files
    "latin1": _text("model: tiny-llama\n# caf\xe9\n".encode("latin-1"), "latin1.yaml"),
    "int_key": _text("model: tiny-llama\n1: 2\n", "int_key.yaml"),
    "null_key": _text("model: tiny-llama\n~: 2\n", "null_key.yaml"),
    "list_key": _text("model: tiny-llama\n[1, 2]: 2\n", "list_key.yaml"),
    "bool_key": _text("model: tiny-llama\nyes: 2\n", "bool_key.yaml"),
    "nested": _text("model: tiny-llama\nsparsity: {a: 1}\n", "nested.yaml"),
    "nested_targets": _text("model: tiny-llama\ntargets: {a: 1}\n", "nested_targets.yaml"),
    "nested_model": _text("model: {name: tiny-llama}\n", "nested_model.yaml"),
    "yaml_list": _text("- model\n- tiny-llama\n", "list.yaml"),
    "yaml_scalar": _text("tiny-llama\n", "scalar.yaml"),
    "duplicate": _text("model: tiny-llama\nsparsity: 0.3\nsparsity: 0.4\n", "duplicate.yaml"),
    "huge_seed": _text(f"model: tiny-llama\nseed: {2**70}\n", "huge_seed.yaml"),
    "tabs": _text("model: tiny-llama\nsparsity:\t0.5\n  \tx: 1\n", "tabs.yaml"),
    "laughs": _text(BILLION_LAUGHS, "laughs.yaml"),
    "alias_loop": _text("model: tiny-llama\ntask_args: &x {a: *x}\n", "loop.yaml"),
    "empty": _text("", "empty.yaml"),
    "comments": _text("# model: tiny-llama\n", "comments.yaml"),
    "granularity": _text("model: tiny-llama\ngranularity: odd\n", "granularity.yaml"),
    "dtype": _text("model: tiny-llama\ndtype: float8\n", "dtype.yaml"),
    "tasks_number": _text("model: tiny-llama\ntasks: 5\n", "tasks.yaml"),
    "grid_list": _text("model: tiny-llama\ngrid: [1, 2]\n", "grid.yaml"),
    "grid_unknown": _text("model: tiny-llama\ngrid: {sparsty: [0.5]}\n", "grid_unknown.yaml"),
    "task_args_list": _text("model: tiny-llama\ntask_args: [1]\n", "task_args.yaml"),
    "eval_tasks_map": _text("model: tiny-llama\ntasks: {a: 1}\n", "eval_tasks.yaml"),
    "folder": _folder,
    "task_args_zero": _text("model: tiny-llama\ntasks: [wikitext]\ntask_args: {max_length: 0}\n", "args0.yaml"),
    "task_args_mode": _text("model: tiny-llama\ntask_args: {mode: guess}\n", "mode.yaml"),
    "a_file": _text("a file, not a folder", "afile"),
    # corpora and sparsity files
    "corpus_binary": _text(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary.txt"),
    "corpus_nul": _text(b"text\x00with NUL bytes", "nul.txt"),
    "corpus_empty": _text("  \n\n", "empty.txt"),
    "corpus_type": _text("some text", "corpus.csv"),
    "alloc_bad_json": _text("{", "alloc.json"),
    "alloc_empty": _text("{}", "alloc.json"),
    "alloc_empty_saved": _text('{"sparsity": {}}', "alloc.json"),
    "alloc_list": _text("[0.5]", "alloc.json"),
    "alloc_bool": _text('{"model.layers.0.mlp.up_proj": true}', "alloc.json"),
    "alloc_range": _text('{"model.layers.0.mlp.up_proj": 1.5}', "alloc.json"),
    # broken model folders
    "truncated": _model(lambda p: _truncate(p / "model.safetensors")),
    "garbage": _model(lambda p: (p / "model.safetensors").write_bytes(bytes(range(256)) * 20)),
    "empty_weights": _model(lambda p: (p / "model.safetensors").write_bytes(b"")),
    "no_weights": _model(lambda p: (p / "model.safetensors").unlink()),
    "no_tokenizer": _model(lambda p: [f.unlink() for f in p.glob("tokenizer*")]),
    "config_list": _model(lambda p: (p / "config.json").write_text("[1, 2]")),
    "config_not_json": _model(lambda p: (p / "config.json").write_text('{"architectures": [')),
    "config_typed": _model(_edit_config(hidden_size="wide")),
    "config_latin1": _model(lambda p: (p / "config.json").write_bytes(b'{"a": "caf\xe9"}')),
    # checkpoints with a damaged report
    "report_list": _checkpoint(lambda r: [r]),
    "report_not_json": _checkpoint("{'model': 1}"),
    "report_empty_allocation": _checkpoint(lambda r: r | {"allocation": {}}),
    "report_typed": _checkpoint(lambda r: r | {"allocation": {"l.0": "half"}}),
    "report_layers": _checkpoint(lambda r: r | {"layers": "l.0"}),
    "report_config": _checkpoint(lambda r: r | {"config": {"seed": "x"}}),
    "report_range": _checkpoint(lambda r: r | {"measured_per_layer": {"l.0": 7}}),
    # VQA data
    "vqa_null_answer": _vqa(_null_answer),
    "vqa_answers_string": _vqa(_set("a.answers", "red")),
    "vqa_no_answers": _vqa(_set("a.answers", [])),
    "vqa_question_id_list": _vqa(_set("a.question_id", [0])),
    "vqa_image_id_bool": _vqa(_set("q.image_id", True)),
    "vqa_question_null": _vqa(_set("q.question", None, 1)),
    "vqa_questions_dict": _vqa(lambda q, a: q.update(questions={"0": 1})),
    "vqa_annotations_number": _vqa(lambda q, a: a.update(annotations=3)),
    "vqa_not_image": _vqa(image=b"this is not a png"),
    "vqa_truncated_image": _vqa(image=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
}

CASES = {
    # config files (-C): one line naming the file and what is wrong
    "yaml not utf-8": ([*PRUNE, "-C", "{latin1}"], "is not UTF-8 text (byte 0xe9"),
    "yaml int key": ([*PRUNE, "-C", "{int_key}"], "has the key 1 (line 2): keys are names"),
    "yaml null key": ([*PRUNE, "-C", "{null_key}"], "has the key None (line 2)"),
    "yaml list key": ([*PRUNE, "-C", "{list_key}"], "has the key [1, 2] (line 2)"),
    "yaml bool key": ([*PRUNE, "-C", "{bool_key}"], "has the key True (line 2)"),
    "yaml mapping for a number": ([*PRUNE, "-C", "{nested}"], "sparsity: Input should be a valid number"),
    "yaml mapping for a list": ([*PRUNE, "-C", "{nested_targets}"], "targets: Input should be a valid list"),
    "yaml mapping for a name": (
        ["prune", "--no-eval", "-C", "{nested_model}"],
        "model: Input should be a valid string",
    ),
    "yaml a list": ([*PRUNE, "-C", "{yaml_list}"], "must be a mapping of keys to values, not a list"),
    "yaml a scalar": ([*PRUNE, "-C", "{yaml_scalar}"], "must be a mapping of keys to values, not a str"),
    "yaml duplicate key": ([*PRUNE, "-C", "{duplicate}"], "gives the key 'sparsity' twice (lines 2 and 3)"),
    "yaml huge seed": ([*PRUNE, "-C", "{huge_seed}"], "seed: Input should be less than or equal to 4294967295"),
    "yaml tabs": ([*PRUNE, "-C", "{tabs}"], "is not valid YAML: found character '\\t' that cannot start any token"),
    "yaml billion laughs": ([*PRUNE, "-C", "{laughs}"], "expands to more than 100000 values through YAML aliases"),
    "yaml alias loop": ([*PRUNE, "-C", "{alias_loop}"], "has a YAML alias inside the value it names"),
    "yaml empty": ([*PRUNE, "-C", "{empty}"], "holds no settings"),
    "yaml only comments": ([*PRUNE, "-C", "{comments}"], "holds no settings"),
    "yaml a folder": ([*PRUNE, "-C", "{folder}"], "is a folder: give a YAML file"),
    "yaml missing": ([*PRUNE, "-C", "no-such.yaml"], "config file no-such.yaml cannot be read: No such file"),
    "yaml odd granularity": ([*PRUNE, "-C", "{granularity}"], "granularity: Input should be 'layer', 'block'"),
    "yaml odd dtype": ([*PRUNE, "-C", "{dtype}"], "dtype: Input should be 'float32'"),
    "run yaml tasks a number": ([*RUN, "-C", "{tasks_number}"], "tasks: Input should be a valid list"),
    "run yaml grid a list": ([*RUN, "-C", "{grid_list}"], "grid: must be a mapping of keys to lists of values"),
    "run yaml grid unknown key": ([*RUN, "-C", "{grid_unknown}"], "grid.sparsty: unknown key"),
    "run yaml task_args a list": ([*RUN, "-C", "{task_args_list}"], "task_args: Input should be a valid dictionary"),
    "eval yaml not utf-8": ([*EVAL, "-C", "{latin1}"], "is not UTF-8 text"),
    "eval yaml tasks a mapping": ([*EVAL, "-C", "{eval_tasks_map}"], "tasks: Input should be a valid list"),
    # out-of-range numbers
    "seed 2**70": ([*PRUNE, "--seed", str(2**70)], "seed: Input should be less than or equal to 4294967295"),
    "seed negative": ([*PRUNE, "--seed", "-1"], "seed: Input should be greater than or equal to 0"),
    "nsamples huge": ([*PRUNE, "--nsamples", str(10**12)], "nsamples: Input should be less than or equal to 1000000"),
    "seqlen huge": ([*PRUNE, "--seqlen", str(10**9)], "seqlen: Input should be less than or equal to 1048576"),
    "seqlen 1": ([*PRUNE, "--seqlen", "1"], "seqlen: Input should be greater than or equal to 2"),
    "score-nsamples negative": ([*PRUNE, "--score-nsamples", "-5"], "score_nsamples: Input should be greater"),
    "score-nsamples huge": ([*PRUNE, "--score-nsamples", str(10**30)], "score_nsamples: Input should be less"),
    "micro-batch 0": ([*PRUNE, "--micro-batch", "0"], "micro_batch: Input should be greater than or equal to 1"),
    "zo-noise huge": ([*PRUNE, "--zo-noise", "100000"], "zo_noise: Input should be less than or equal to 1000"),
    "run limit huge": ([*RUN, "--limit", str(10**20)], "limit: Input should be less than or equal to 2147483647"),
    "run limit 0": ([*RUN, "--limit", "0"], "limit: Input should be greater than or equal to 1"),
    "run eval-seed huge": ([*RUN, "--eval-seed", str(2**70)], "eval_seed: Input should be less than or equal to"),
    "run parallel 0": ([*RUN, "--grid", "sparsity=0.4,0.5", "--parallel", "0"], "parallel: Input should be greater"),
    "run parallel huge": (
        [*RUN, "--grid", "sparsity=0.4,0.5", "--parallel", "100000"],
        "parallel: Input should be less",
    ),
    "run grid seed not a number": ([*RUN, "--grid", "seed=1e30"], "seed: Input should be a valid integer"),
    "run grid sparsity nan": ([*RUN, "--grid", "sparsity=nan"], "sparsity: Input should be a finite number"),
    # floats
    "zo-eps inf": ([*PRUNE, "--zo-eps", "inf"], "zo_eps: Input should be a finite number"),
    "zo-eps nan": ([*PRUNE, "--zo-eps", "nan"], "zo_eps: Input should be a finite number"),
    "zo-eps 0": ([*PRUNE, "--zo-eps", "0"], "zo_eps: Input should be greater than 0"),
    "zo-eps negative": ([*PRUNE, "--zo-eps", "-0.001"], "zo_eps: Input should be greater than 0"),
    "zo-eps huge": ([*PRUNE, "--zo-eps", "5"], "zo_eps: Input should be less than or equal to 1"),
    "sparsity nan": ([*PRUNE, "--sparsity", "nan"], "sparsity: Input should be a finite number"),
    "sparsity -inf": ([*PRUNE, "--sparsity", "-inf"], "sparsity: Input should be a finite number"),
    "max-sparsity 1.5": ([*PRUNE, "--max-sparsity", "1.5"], "max_sparsity: Input should be less than or equal to 1"),
    "max-sparsity nan": ([*PRUNE, "--max-sparsity", "nan"], "max_sparsity: Input should be a finite number"),
    # N:M patterns
    "nm 0:4": ([*PRUNE, "--allocator", "uniform", "--nm", "0:4"], "N:M pattern 0:4 is invalid: need 0 < N < M"),
    "nm 2:0": ([*PRUNE, "--allocator", "uniform", "--nm", "2:0"], "N:M pattern 2:0 is invalid"),
    "nm huge n": ([*PRUNE, "--allocator", "uniform", "--nm", "99999999999999999999:4"], "need 0 < N < M"),
    "nm huge m": ([*PRUNE, "--allocator", "uniform", "--nm", "1:99999999999999999999"], "M must be at most 1024"),
    "nm three parts": ([*PRUNE, "--allocator", "uniform", "--nm", "2:4:8"], "is not of the form N:M"),
    "nm negative": ([*PRUNE, "--allocator", "uniform", "--nm", "-2:4"], "is not of the form N:M"),
    # regular expressions
    "targets not a regex": ([*PRUNE, "--targets", "("], "targets: '(' is not a regular expression: missing )"),
    "ignore not a regex": ([*PRUNE, "--ignore", "[a-"], "ignore: '[a-' is not a regular expression"),
    "second target not a regex": ([*PRUNE, "--targets", "mlp", "--targets", "*x"], "'*x' is not a regular expression"),
    # calibration corpora
    "corpus a folder without text": ([*PRUNE, "--corpus", "{folder}"], "holds no .txt files"),
    "corpus binary": ([*PRUNE, "--corpus", "{corpus_binary}"], "is not UTF-8 text (byte 0x89 at offset 0)"),
    "corpus NUL bytes": ([*PRUNE, "--corpus", "{corpus_nul}"], "is not text (it holds NUL bytes)"),
    "corpus empty": ([*PRUNE, "--corpus", "{corpus_empty}"], "holds no text"),
    "corpus missing": ([*PRUNE, "--corpus", "no/such.txt"], "corpus not found: no/such.txt"),
    "corpus unknown name": ([*PRUNE, "--corpus", "wikipedai"], "unknown corpus 'wikipedai'"),
    "corpus odd file type": ([*PRUNE, "--corpus", "{corpus_type}"], "unknown corpus file type '.csv'"),
    # sparsity files for --allocator from-file
    "allocation missing": ([*PRUNE, "--allocator", "from-file", "--allocation-file", "no.json"], "does not exist"),
    "allocation not json": (
        [*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_bad_json}"],
        "valid JSON",
    ),
    "allocation empty": ([*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_empty}"], "holds no layers"),
    "allocation empty saved": (
        [*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_empty_saved}"],
        "holds no layers",
    ),
    "allocation a list": ([*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_list}"], "to numbers"),
    "allocation true": ([*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_bool}"], "to numbers"),
    "allocation 1.5": ([*PRUNE, "--allocator", "from-file", "--allocation-file", "{alloc_range}"], "outside [0, 1)"),
    # model names and folders
    "model empty name": (["prune", "--model", "", "--no-eval"], "model: String should have at least 1 character"),
    "model unicode name": (["prune", "--model", "模型-λ", "--no-eval"], "model '模型-λ' is neither a registered model"),
    "model folder not a model": (["prune", "--model", "{folder}", "--no-eval"], "no model adapter recognises"),
    "model truncated safetensors": (
        ["prune", "--model", "{truncated}", "--no-eval"],
        "cannot load the model in {truncated}: model.safetensors is not a whole safetensors file",
    ),
    "model garbage safetensors": (
        ["prune", "--model", "{garbage}", "--no-eval"],
        "cannot load the model in {garbage}: model.safetensors is not a whole safetensors file",
    ),
    "model empty safetensors": (["prune", "--model", "{empty_weights}", "--no-eval"], "header too small"),
    "model no weights": (
        ["prune", "--model", "{no_weights}", "--no-eval"],
        "cannot load the model in {no_weights}: no model.safetensors or",
    ),
    "model no tokenizer": (
        ["prune", "--model", "{no_tokenizer}", "--no-eval"],
        "cannot load the model in {no_tokenizer}: no tokenizer.json or",
    ),
    "model config a list": (
        ["prune", "--model", "{config_list}", "--no-eval"],
        "cannot load the model in {config_list}: config.json holds a JSON list, not an object",
    ),
    "model config not json": (
        ["prune", "--model", "{config_not_json}", "--no-eval"],
        "cannot load the model in {config_not_json}: config.json is not valid JSON",
    ),
    "model config wrong type": (["prune", "--model", "{config_typed}", "--no-eval"], "cannot load the model in"),
    "model config latin-1": (["prune", "--model", "{config_latin1}", "--no-eval"], "config.json is not valid JSON"),
    "run model truncated": (["run", "--model", "{truncated}"], "is not a whole safetensors file"),
    "eval model truncated": (["eval", "--model", "{truncated}"], "cannot load the model in {truncated}"),
    "eval model no tokenizer": (["eval", "--model", "{no_tokenizer}"], "cannot load the model in {no_tokenizer}"),
    "eval checkpoint broken": ([*EVAL, "--checkpoint", "{config_list}"], "cannot load the model in {config_list}"),
    # plugin, task and tower names
    "run unknown task": ([*RUN, "--task", "nosuch"], "unknown task 'nosuch'"),
    "eval unknown task": ([*EVAL, "--tasks", "nosuch"], "unknown task 'nosuch'"),
    "eval no tasks": ([*EVAL, "--tasks", ","], "tasks: List should have at least 1 item"),
    "eval unknown model": (["eval", "--model", "nosuch-model"], "model 'nosuch-model' is neither a registered model"),
    # evaluation settings
    "eval limit 0": ([*EVAL, "--limit", "0"], "limit: Input should be greater than or equal to 1"),
    "eval limit negative": ([*EVAL, "--limit", "-5"], "limit: Input should be greater than or equal to 1"),
    "eval limit huge": ([*EVAL, "--limit", str(10**20)], "limit: Input should be less than or equal to 2147483647"),
    "eval seed huge": ([*EVAL, "--seed", str(2**70)], "seed: Input should be less than or equal to 4294967295"),
    "eval seed negative": ([*EVAL, "--seed", "-1"], "seed: Input should be greater than or equal to 0"),
    "eval task-arg without =": ([*EVAL, "--task-arg", "max_length"], "--task-arg takes key=value"),
    "eval perplexity window 0": ([*EVAL, "--task-arg", "wikitext.max_length=0"], "max_length=0 must be a whole"),
    "eval perplexity window 1": ([*EVAL, "--task-arg", "max_length=1"], "max_length=1 must be a whole number from 2"),
    "eval tokens 0": ([*EVAL, "--task-arg", "tokens=0"], "tokens=0 must be a whole number from 1"),
    "eval batch size text": ([*EVAL, "--task-arg", "batch_size=abc"], "batch_size='abc' is not a valid int"),
    "eval batch size 0": ([*EVAL, "--tasks", "vqa", "--task-arg", "batch_size=0"], "batch_size=0 must be a whole"),
    "eval vqa mode": ([*EVAL, "--tasks", "vqa", "--task-arg", "vqa.mode=guess"], "mode='guess' must be one of"),
    "eval data-dir a file": ([*EVAL, "--tasks", "vqa", "--data-dir", "{corpus_empty}"], "data folder not found"),
    "eval data-dir missing": ([*EVAL, "--tasks", "vqa", "--data-dir", "no/such"], "data folder not found"),
    "eval checkpoint a file": ([*EVAL, "--checkpoint", "{corpus_empty}"], "checkpoint folder not found"),
    "eval checkpoint missing": ([*EVAL, "--checkpoint", "no/such"], "checkpoint folder not found"),
    # a checkpoint's report.json
    "report a list": ([*EVAL, "--checkpoint", "{report_list}"], "invalid checkpoint report"),
    "report not json": ([*EVAL, "--checkpoint", "{report_not_json}"], "cannot read the checkpoint's report"),
    "report empty allocation": (
        [*EVAL, "--checkpoint", "{report_empty_allocation}"],
        "allocation: Dictionary should have at least 1 item",
    ),
    "report allocation text": (
        [*EVAL, "--checkpoint", "{report_typed}"],
        "allocation.l.0: Input should be a valid number",
    ),
    "report layers text": ([*EVAL, "--checkpoint", "{report_layers}"], "layers: Input should be a valid list"),
    "report config typed": ([*EVAL, "--checkpoint", "{report_config}"], "config.seed: Input should be a valid integer"),
    "report sparsity 7": ([*EVAL, "--checkpoint", "{report_range}"], "l.0: sparsity 7.0 is outside [0, 1]"),
    # VQA files, through eval and through validate
    "vqa null answer": ([*EVAL, "--tasks", "vqa", "--data-dir", "{vqa_null_answer}"], "answers.3.answer: Input should"),
    "vqa answers a string": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_answers_string}"],
        "annotations.0.answers: Input should be a valid list",
    ),
    "vqa no answers": (["validate", "--tasks", "vqa", "--data-dir", "{vqa_no_answers}"], "should have at least 1 item"),
    "vqa question id a list": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_question_id_list}"],
        "annotations.0.question_id",
    ),
    "vqa image id true": (["validate", "--tasks", "vqa", "--data-dir", "{vqa_image_id_bool}"], "questions.0.image_id"),
    "vqa question null": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_question_null}"],
        "questions.1.question: Input should be a valid string",
    ),
    "vqa questions a mapping": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_questions_dict}"],
        "questions: Input should be a valid list",
    ),
    "vqa annotations a number": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_annotations_number}"],
        "annotations: Input should be a valid list",
    ),
    "validate not an image": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_not_image}"],
        "is not a readable image",
    ),
    "validate truncated image": (
        ["validate", "--tasks", "vqa", "--data-dir", "{vqa_truncated_image}"],
        "is not a readable image",
    ),
    "run task_args out of range": (["run", "-C", "{task_args_zero}"], "max_length"),
    "run task_args unknown mode": (["run", "-C", "{task_args_mode}"], "mode"),
    # output paths, checked before any model loads
    "prune into a folder of the user": ([*PRUNE, "-o", "{folder}"], "is not an ecoflap run folder"),
    "run into a folder of the user": ([*RUN, "-o", "{folder}"], "add --overwrite to replace its files"),
    "prune into the current folder": ([*PRUNE, "-o", "."], "is the current folder: ecoflap never replaces it"),
    "overwrite the current folder": ([*PRUNE, "-o", ".", "--overwrite"], "is the current folder"),
    "prune above the current folder": ([*PRUNE, "-o", ".."], "a folder above the current one"),
    "run into a file": ([*RUN, "-o", "{a_file}"], "is a file, not a folder"),
    "run under a file": ([*RUN, "-o", "{a_file}/run"], "afile is a file, not a folder"),
    "eval not an image": ([*EVAL, "--tasks", "vqa", "--data-dir", "{vqa_not_image}"], "1.png is not a readable image"),
}

ENVIRONMENT = {  # (environment variable, value, command line, message)
    "threads text": ("ECOFLAP_THREADS", "abc", RUN, "ECOFLAP_THREADS='abc': give a whole number of threads"),
    "threads 0": ("ECOFLAP_THREADS", "0", PRUNE, "ECOFLAP_THREADS='0': give a whole number of threads from 1"),
    "threads negative": ("ECOFLAP_THREADS", "-1", PRUNE, "ECOFLAP_THREADS='-1'"),
    "threads huge": ("ECOFLAP_THREADS", "99999", PRUNE, "ECOFLAP_THREADS='99999'"),
    "threads superscript": ("ECOFLAP_THREADS", "²", PRUNE, "ECOFLAP_THREADS='²'"),
    "omp threads text": ("OMP_NUM_THREADS", "four", EVAL, "OMP_NUM_THREADS='four'"),
}


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny-llama folder (Hugging Face layout) to damage."""
    from conftest import tiny_adapter

    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    tiny_adapter().save(path)
    return path


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder, cache, run cache and results database all under ``tmp_path``."""
    for name, value in {
        "ECOFLAP_CACHE": tmp_path / "cache",
        "ECOFLAP_RUN_CACHE": tmp_path / "run-cache",
        "ECOFLAP_DATABASE_URL": f"sqlite:///{tmp_path / 'results.db'}",
        "PREFECT_HOME": tmp_path / "prefect",
        "ECOFLAP_THREADS": "1",
    }.items():
        monkeypatch.setenv(name, str(value))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_error_line(args: list[str], message: str, root: Path) -> None:
    before = _files(root)
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert _files(root) == before, sorted(_files(root) - before)  # nothing written: no run folder, no database


def _placeholders(args: list[str], message: str) -> set[str]:
    return {name for text in [*args, message] for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(case: str, sandbox: Path, saved_model: Path) -> None:
    args, message = CASES[case]
    made = {name: str(INPUTS[name](sandbox, saved_model)) for name in _placeholders(args, message)}
    args = [a.format(**made) for a in args]
    assert_one_error_line(args, message.format(**made), sandbox)


@pytest.mark.parametrize("case", list(ENVIRONMENT))
def test_bad_environment_is_one_error_line(case: str, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, value, args, message = ENVIRONMENT[case]
    monkeypatch.delenv("ECOFLAP_THREADS")
    monkeypatch.setenv(name, value)
    assert_one_error_line(list(args), message, sandbox)
