"""VQA data: VQAv2 / OK-VQA question + annotation JSON, and GQA's balanced question JSON.

VQAv2 / OK-VQA folder: ``*questions*.json`` (``{"questions": [{"question_id", "image_id", "question"}]}``),
``*annotations*.json`` (``{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}]}]}``),
the images under ``images/`` or the folder named by ``data_subtype`` (``val2014``), found by id
(``COCO_val2014_000000000042.jpg`` or ``42.png``); optionally ``answer_list.json`` (candidates for
ranking). GQA folder: ``*questions*.json`` (``{qid: {"imageId", "question", "answer"}}``) and ``images/``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.datasets import ImageIndex, find_one, load_json, non_empty, require


@dataclass(frozen=True)
class VqaQuestion:
    question_id: Any
    image: Path
    question: str
    answers: tuple[str, ...]  # the human answers (10 in VQAv2 / OK-VQA, 1 in GQA)


@dataclass
class VqaSet:
    format: str  # "vqav2" or "gqa"
    questions: list[VqaQuestion]
    candidates: list[str]  # answers to rank (LAVIS's answer list)
    source: Path
    files: dict[str, str] = field(default_factory=dict)


def read_vqa(folder: Path, questions: Path | None = None, annotations: Path | None = None,
             images: Path | None = None) -> VqaSet:  # fmt: skip
    """A VQAv2 / OK-VQA or GQA folder (the format is recognised from the question file)."""
    qfile = questions or find_one(folder, ("*questions*.json", "*question*.json"), "question")
    data = load_json(qfile, "question file")
    if isinstance(data, dict) and "questions" not in data and data and _looks_gqa(data):
        return read_gqa(qfile, data, images or folder / "images")
    afile = annotations or find_one(folder, ("*annotations*.json", "*annotation*.json"), "annotation")
    return read_vqav2(qfile, data, afile, images or _vqav2_images(folder, data))


def _looks_gqa(data: dict) -> bool:
    first = next(iter(data.values()))
    return isinstance(first, dict) and "imageId" in first


def _vqav2_images(folder: Path, questions: Any) -> Path:
    subtype = questions.get("data_subtype") if isinstance(questions, dict) else None
    for candidate in (folder / "images", folder / str(subtype) if subtype else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    return folder


def read_vqav2(qfile: Path, data: Any, afile: Path, image_folder: Path) -> VqaSet:
    """Questions joined with their annotations by ``question_id``; every image must exist."""
    records = require(data, "questions", qfile, "the question file")
    annotations = require(load_json(afile, "annotation file"), "annotations", afile, "the annotation file")
    answers = {}
    for i, ann in enumerate(annotations):
        where = f"annotation {i}"
        humans = [str(require(a, "answer", afile, where)) for a in require(ann, "answers", afile, where)]
        if not humans:
            raise EcoflapError(f"{afile}: {where} has no answers")
        answers[require(ann, "question_id", afile, where)] = humans
    index = ImageIndex(image_folder)
    questions = []
    for i, record in enumerate(records):
        qid = require(record, "question_id", qfile, f"question {i}")
        if qid not in answers:
            raise EcoflapError(f"{qfile}: question {qid!r} has no annotation in {afile}")
        image = index.find(require(record, "image_id", qfile, f"question {i}"), qfile)
        questions.append(
            VqaQuestion(qid, image, str(require(record, "question", qfile, f"question {i}")), tuple(answers[qid]))
        )
    non_empty(questions, "question", qfile)
    candidates = _candidates(qfile.parent, [a for q in questions for a in q.answers])
    return VqaSet("vqav2", questions, candidates, qfile, {"questions": str(qfile), "annotations": str(afile)})


def read_gqa(qfile: Path, data: dict, image_folder: Path) -> VqaSet:
    """GQA's ``{question_id: {"imageId", "question", "answer", ...}}`` with images ``images/<imageId>.jpg``."""
    index = ImageIndex(image_folder)
    questions = []
    for qid, record in data.items():
        where = f"question {qid}"
        image = index.find(require(record, "imageId", qfile, where), qfile)
        answer = str(require(record, "answer", qfile, where))
        questions.append(VqaQuestion(qid, image, str(require(record, "question", qfile, where)), (answer,)))
    non_empty(questions, "question", qfile)
    candidates = _candidates(qfile.parent, [q.answers[0] for q in questions])
    return VqaSet("gqa", questions, candidates, qfile, {"questions": str(qfile)})


def _candidates(folder: Path, answers: list[str]) -> list[str]:
    """``answer_list.json`` beside the questions, else every answer given, the most frequent first."""
    listed = folder / "answer_list.json"
    if listed.is_file():
        values = load_json(listed, "answer list")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise EcoflapError(f"{listed} must be a non-empty JSON list of answer strings")
        return values
    return [answer for answer, _ in Counter(answers).most_common()]
