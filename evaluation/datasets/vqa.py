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

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.evaluation.datasets import ImageIndex, find_one, load_json, non_empty

Id = StrictInt | StrictStr  # question and image ids: numbers or names, never null, lists or true/false


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


# ---- the files' records, validated (a wrong type or a null is one error line naming the record) ----------
class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class VqaAnswer(_Record):
    answer: StrictStr


class VqaAnnotation(_Record):
    question_id: Id
    image_id: Id
    answers: list[VqaAnswer] = Field(min_length=1)


class VqaQuestionRecord(_Record):
    question_id: Id
    image_id: Id
    question: StrictStr


class VqaQuestionFile(_Record):
    questions: list[VqaQuestionRecord]
    data_subtype: StrictStr | None = None


class VqaAnnotationFile(_Record):
    annotations: list[VqaAnnotation]


class GqaRecord(_Record):
    imageId: Id  # noqa: N815 - GQA's own key
    question: StrictStr
    answer: StrictStr


def validated(kind: Any, data: Any, path: Path, what: str) -> Any:
    """``data`` (read from ``path``) as ``kind``; a mistake is one EcoflapError line naming the record."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        raise EcoflapError(describe_validation_error(exc, f"{what} {path}", "file")) from None


def read_vqa(folder: Path, questions: Path | None = None, annotations: Path | None = None,
             images: Path | None = None) -> VqaSet:  # fmt: skip
    """A VQAv2 / OK-VQA or GQA folder (the format is recognised from the question file)."""
    qfile = questions or find_one(folder, ("*questions*.json", "*question*.json"), "question")
    data = load_json(qfile, "question file")
    if isinstance(data, dict) and "questions" not in data and data and _looks_gqa(data):
        return read_gqa(qfile, data, images or folder / "images")
    records = validated(VqaQuestionFile, data, qfile, "question file")
    afile = annotations or find_one(folder, ("*annotations*.json", "*annotation*.json"), "annotation")
    return read_vqav2(qfile, records, afile, images or _vqav2_images(folder, records.data_subtype))


def _looks_gqa(data: dict) -> bool:
    first = next(iter(data.values()))
    return isinstance(first, dict) and "imageId" in first


def _vqav2_images(folder: Path, subtype: str | None) -> Path:
    for candidate in (folder / "images", folder / subtype if subtype else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    return folder


def read_vqav2(qfile: Path, records: VqaQuestionFile, afile: Path, image_folder: Path) -> VqaSet:
    """Questions joined with their annotations by ``question_id``; every image must exist."""
    annotations = validated(VqaAnnotationFile, load_json(afile, "annotation file"), afile, "annotation file")
    answers = {ann.question_id: tuple(a.answer for a in ann.answers) for ann in annotations.annotations}
    index = ImageIndex(image_folder)
    questions = []
    for record in records.questions:
        if record.question_id not in answers:
            raise EcoflapError(f"{qfile}: question {record.question_id!r} has no annotation in {afile}")
        image = index.find(record.image_id, qfile)
        questions.append(VqaQuestion(record.question_id, image, record.question, answers[record.question_id]))
    non_empty(questions, "question", qfile)
    candidates = _candidates(qfile.parent, [a for q in questions for a in q.answers])
    return VqaSet("vqav2", questions, candidates, qfile, {"questions": str(qfile), "annotations": str(afile)})


def read_gqa(qfile: Path, data: dict, image_folder: Path) -> VqaSet:
    """GQA's ``{question_id: {"imageId", "question", "answer", ...}}`` with images ``images/<imageId>.jpg``."""
    records = validated(dict[str, GqaRecord], data, qfile, "question file")
    index = ImageIndex(image_folder)
    questions = [
        VqaQuestion(qid, index.find(record.imageId, qfile), record.question, (record.answer,))
        for qid, record in records.items()
    ]
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
