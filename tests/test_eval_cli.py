"""``ecoflap eval`` / ``ecoflap validate`` from the command line: bad input is one line and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ECOFLAP = str(Path(sys.executable).with_name("ecoflap"))


def run(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "ECOFLAP_THREADS": "1",
        "HF_HOME": str(env_home / "hf"),
        "ECOFLAP_CACHE": str(env_home / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    return subprocess.run([ECOFLAP, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A VQAv2-format folder (``data/vqa``) with two questions on two images."""
    folder = tmp_path / "data" / "vqa"
    (folder / "images").mkdir(parents=True)
    questions, annotations = [], []
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (8, 8), colour).save(folder / "images" / f"{i}.png")
        questions.append({"question_id": i, "image_id": i, "question": "what colour?"})
        answers = [{"answer": colour, "answer_id": k} for k in range(10)]
        annotations.append({"question_id": i, "image_id": i, "answers": answers})
    (folder / "questions.json").write_text(json.dumps({"questions": questions}))
    (folder / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return tmp_path / "data"


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """An output folder that already holds a results.json."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"results": {"earlier": {}}}')
    return out


def _unknown_image(data: Path) -> None:
    questions = json.loads((data / "vqa" / "questions.json").read_text())
    questions["questions"][1]["image_id"] = 99
    (data / "vqa" / "questions.json").write_text(json.dumps(questions))


BAD = {
    "unknown task": (["--tasks", "vqa2"], None, "unknown task 'vqa2'. Did you mean 'vqa'?"),
    "missing data": (["--tasks", "vqa", "--data-dir", "/nonexistent/x"], None, "data folder not found"),
    "malformed file": (
        ["--tasks", "vqa"],
        lambda d: (d / "vqa" / "annotations.json").write_text("{"),
        "not valid JSON",
    ),
    "unknown image": (["--tasks", "vqa"], _unknown_image, "names image 99, which is not in"),
    "empty split": (
        ["--tasks", "vqa"],
        lambda d: (d / "vqa" / "questions.json").write_text('{"questions": []}'),
        "the question split is empty",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_leaves_results_intact(case: str, data: Path, previous: Path, tmp_path) -> None:
    args, damage, message = BAD[case]
    if damage is not None:
        damage(data)
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(data)]
    before = (previous / "results.json").read_bytes()
    result = run("eval", "--model", "tiny-llama", *args, "-o", str(previous), env_home=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (previous / "results.json").read_bytes() == before


def test_validate_reads_the_data_without_a_model(data: Path, tmp_path: Path) -> None:
    result = run("validate", "--model", "tiny-llama", "--tasks", "vqa", "--data-dir", str(data), env_home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok  vqa: " in result.stdout and "2 questions (vqav2)" in result.stdout
    bad = run("validate", "--tasks", "vqa,nope", "--data-dir", str(data), env_home=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: unknown task 'nope'")


@pytest.mark.slow  # two full runs (model and lm-eval loads): about a minute on a busy 2-core machine
def test_eval_writes_results_and_table_and_reuses_finished_tasks(data: Path, previous: Path, tmp_path: Path) -> None:
    (data / "wikitext").mkdir()
    (data / "wikitext" / "wiki.test.raw").write_text(" = A = \n\n The pruned model reads this text . \n")
    args = ["eval", "--model", "tiny-llama", "--tasks", "wikitext,vqa", "--data-dir", str(data), "-o", str(previous)]
    first = run(*args, env_home=tmp_path)
    assert first.returncode == 0, first.stderr
    document = json.loads((previous / "results.json").read_text())
    assert set(document["results"]) == {"wikitext"} and "vqa" in document["skipped"]
    assert document["ecoflap"]["model"] == "tiny-llama" and document["ecoflap"]["dense"] is True
    assert "|wikitext" in first.stdout and "word_perplexity" in first.stdout
    second = run(*args, env_home=tmp_path)
    assert "evaluate: Cached" in second.stdout + second.stderr  # Prefect's cache, shared with prune and run
    assert json.loads((previous / "results.json").read_text())["results"] == document["results"]
