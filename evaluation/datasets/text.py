"""Text data: MMLU (Hendrycks' CSV layout or cais/mmlu-style JSON) and WikiText-2 raw files.

MMLU folder: ``dev/<subject>_dev.csv`` and ``test/<subject>_test.csv`` (or ``val/``), rows
``question, A, B, C, D, answer-letter`` without a header, as in the original ``data.tar``; or
``dev.jsonl`` / ``test.jsonl`` (``.json``) with ``subject``, ``question``, ``choices`` (4) and
``answer`` (0-3 or a letter), as cais/mmlu on the Hub.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.datasets import load_json, non_empty, require

LETTERS = "ABCD"
#: the files of a WikiText folder, per split (the raw files first)
WIKITEXT_FILES = {
    "test": ("wiki.test.raw", "test.raw", "wiki.test.tokens"),
    "validation": ("wiki.valid.raw", "valid.raw", "wiki.valid.tokens"),
}


@dataclass(frozen=True)
class MmluQuestion:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0-3

    def record(self) -> dict:
        return asdict(self) | {"choices": list(self.choices)}


def read_mmlu(folder: Path) -> dict[str, list[MmluQuestion]]:
    """``{"dev": [...], "test": [...]}`` (test may be missing: then dev is evaluated leave-one-out)."""
    if not folder.is_dir():
        raise EcoflapError(f"MMLU folder not found: {folder}")
    splits = {}
    for split in ("dev", "val", "test"):
        questions = _read_split(folder, split)
        if questions is not None:
            splits[split] = non_empty(questions, split, folder)
    if "dev" not in splits:
        raise EcoflapError(f"{folder}: MMLU needs a dev split (dev/*_dev.csv or dev.jsonl) for the few-shot examples")
    return splits


def _read_split(folder: Path, split: str) -> list[MmluQuestion] | None:
    for name in (f"{split}.jsonl", f"{split}.json"):
        if (folder / name).is_file():
            return _read_records(folder / name)
    if (folder / split).is_dir():
        return [q for path in sorted((folder / split).glob("*.csv")) for q in _read_csv(path, split)]
    return None


def _read_csv(path: Path, split: str) -> list[MmluQuestion]:
    subject = re.sub(rf"_{split}$", "", path.stem)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EcoflapError(f"cannot read {path}: {exc}") from None
    questions = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 6 or row[5].strip() not in LETTERS:
            raise EcoflapError(f"{path}, row {number}: expected question, A, B, C, D, answer letter")
        questions.append(MmluQuestion(subject, row[0], (row[1], row[2], row[3], row[4]), LETTERS.index(row[5].strip())))
    return questions


def _read_records(path: Path) -> list[MmluQuestion]:
    data = load_json(path, "MMLU file")
    if not isinstance(data, list):
        raise EcoflapError(f"{path}: expected a list of questions")
    questions = []
    for i, record in enumerate(data):
        where = f"question {i}"
        choices = require(record, "choices", path, where)
        answer = require(record, "answer", path, where)
        answer = LETTERS.index(answer) if isinstance(answer, str) and answer in LETTERS else answer
        if not (isinstance(choices, list) and len(choices) == 4) or answer not in range(4):
            raise EcoflapError(f"{path}: {where} needs 4 choices and an answer 0-3 or A-D")
        subject = str(require(record, "subject", path, where))
        questions.append(
            MmluQuestion(subject, str(require(record, "question", path, where)), tuple(map(str, choices)), answer)
        )
    return questions


# --------------------------------------------------------------------------- the questions lm-eval ships

_COT_QUESTION = re.compile(
    r"Q: (?P<question>.*?)\n\(A\) (?P<a>.*?)\s\(B\) (?P<b>.*?)\s\(C\) (?P<c>.*?)\s\(D\) (?P<d>.*?)\n"
    r"A: (?:(?!\n\nQ: ).)*?The answer is \((?P<answer>[ABCD])\)",
    re.DOTALL,
)


def lm_eval_dev_questions() -> list[MmluQuestion]:
    """MMLU's real dev questions as the lm-eval wheel ships them (its chain-of-thought prompt file)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError("the MMLU default needs lm-eval: pip install lm-eval==0.4.13")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json"
    prompts = json.loads(path.read_text(encoding="utf-8"))
    questions = []
    for subject, prompt in prompts.items():
        for match in _COT_QUESTION.finditer(prompt):
            choices = tuple(match.group(k).strip() for k in "abcd")
            question = match.group("question").strip()
            questions.append(MmluQuestion(subject, question, choices, LETTERS.index(match.group("answer"))))
    return questions


def read_wikitext(path: Path, split: str = "test") -> list[str]:
    """Articles of a WikiText raw file (``wiki.test.raw``), or of a folder's file of ``split``."""
    from ecoflap.core.datasets.corpora import read_text_corpus, split_text_documents

    if path.is_dir():
        for name in WIKITEXT_FILES[split]:
            if (path / name).is_file():
                path = path / name
                break
        else:
            names = ", ".join(WIKITEXT_FILES[split])
            raise EcoflapError(f"no WikiText {split} file in {path} (looked for {names})")
    if path.suffix in (".raw", ".tokens"):
        try:
            documents = split_text_documents(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise EcoflapError(f"cannot read {path}: {exc}") from None
        return non_empty([d for d in documents if d.strip()], "text", path)
    return read_text_corpus(path)
