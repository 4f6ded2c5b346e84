"""easy-vqa (PyPI ``easy-vqa==1.0``): real VQA data that installs with the project.

4,000 train / 1,000 test 64x64 images, one coloured shape each, 38,575 / 9,673 questions over 13
answers. Each image's colour and shape are read off its own questions and answers (every image has
questions that name both), which gives captions ("a red circle") for captioning, retrieval and the
bridge training of mini-blip2.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ecoflap.core.errors import EcoflapError

Split = Literal["train", "test"]
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    image_id: int


def _package():
    try:
        import easy_vqa
    except ImportError:
        raise EcoflapError("easy-vqa data needs the package easy-vqa==1.0: pip install easy-vqa==1.0") from None
    return easy_vqa


def _check(split: str) -> None:
    if split not in ("train", "test"):
        raise EcoflapError(f"easy-vqa has the splits 'train' and 'test', not {split!r}")


@functools.cache
def questions(split: Split) -> tuple[Question, ...]:
    _check(split)
    get = _package().get_train_questions if split == "train" else _package().get_test_questions
    texts, answers, ids = get()
    return tuple(Question(q, a, int(i)) for q, a, i in zip(texts, answers, ids, strict=True))


@functools.cache
def image_paths(split: Split) -> dict[int, Path]:
    _check(split)
    get = _package().get_train_image_paths if split == "train" else _package().get_test_image_paths
    return {int(i): Path(p) for i, p in get().items()}


def answers() -> list[str]:
    return list(_package().get_answers())


PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}


def _negated(text: str) -> bool:
    return " not " in f" {text} " or text.startswith("is no ")


def _shape_facts(q: Question) -> tuple[set[str], set[str]]:
    """Shapes that one question-answer pair proves present, and proves absent."""
    text = q.question.lower()
    if q.answer in SHAPES:
        return {q.answer}, set()
    named = {s for s in SHAPES if re.search(rf"\b{s}\b", text)}
    if q.answer in ("yes", "no") and named:
        present = (q.answer == "yes") != _negated(text)
        return (named, set()) if present else (set(), named)
    return set(), set()


def _shape(path: Path, facts: list[tuple[set[str], set[str]]]) -> str:
    """The shape the questions prove; where they leave a choice, the pixels' fill of their box decides."""
    present = set().union(*(p for p, _ in facts)) if facts else set()
    absent = set().union(*(a for _, a in facts)) if facts else set()
    candidates = present or (set(SHAPES) - absent)
    return candidates.pop() if len(candidates) == 1 else pixel_shape(path)


def _shape_mask(path: Path) -> tuple[str, Any]:
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    counts = {name: int((rgb == value).all(axis=-1).sum()) for name, value in PALETTE.items()}
    colour = max(counts, key=counts.__getitem__)
    return colour, (rgb == PALETTE[colour]).all(axis=-1)


def pixel_colour(path: Path) -> str:
    """The palette colour with the most exactly matching pixels (easy-vqa draws shapes in flat colours)."""
    return _shape_mask(path)[0]


def pixel_shape(path: Path) -> str:
    """Circle, rectangle or triangle by how much of its bounding box the shape fills (pi/4, 1, 1/2)."""
    import numpy as np

    mask = _shape_mask(path)[1]
    rows, cols = np.nonzero(mask)
    box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    fill = mask.sum() / box
    return min({"triangle": 0.5, "circle": np.pi / 4, "rectangle": 1.0}.items(), key=lambda kv: abs(kv[1] - fill))[0]


@functools.cache
def image_labels(split: Split) -> dict[int, tuple[str, str]]:
    """Image id -> (colour, shape): colour from the pixels, shape from the questions (else the pixels)."""
    import json

    from ecoflap.core.cache import cache_dir
    from ecoflap.core.provenance import write_json

    cached = cache_dir() / "easy-vqa" / f"labels-{split}-v1.json"  # reading 5,000 images takes ~10 s
    if cached.is_file():
        return {int(i): (c, s) for i, (c, s) in json.loads(cached.read_text()).items()}
    facts: dict[int, list[tuple[set[str], set[str]]]] = {}
    for q in questions(split):
        facts.setdefault(q.image_id, []).append(_shape_facts(q))
    paths = image_paths(split)
    labels = {i: (pixel_colour(paths[i]), _shape(paths[i], facts.get(i, []))) for i in sorted(paths)}
    write_json(cached, labels)
    return labels


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def image_caption_pairs(split: Split) -> list[tuple[Path, str]]:
    """(image path, caption) for every image of ``split``, in image-id order."""
    paths = image_paths(split)
    return [(paths[i], caption(*label)) for i, label in image_labels(split).items()]


def question_sample(n: int, seed: int = 0, split: Split = "test") -> list[Question]:
    """``n`` questions of ``split`` drawn with a seeded generator (all of them when ``n`` exceeds the split)."""
    pool = list(questions(split))
    return pool if n >= len(pool) else random.Random(seed).sample(pool, n)
