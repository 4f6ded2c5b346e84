"""The shipped default data of each task, converted once into the task's standard format under the cache.

- VQA: easy-vqa test as VQAv2 (questions + annotations, each answer given by all 10 "humans",
  ``answer_list.json`` = easy-vqa's 13 answers); its validation split (``--task-arg split=validation``):
  1,000 easy-vqa train questions, a seeded sample, for choosing settings without touching test (the pruned
  towers never saw easy-vqa; mini-blip2's small bridge trained on train, so validation reads higher);
- captioning: easy-vqa test images in COCO caption format, one caption per image ("a red circle");
- retrieval: the same images and captions in Karpathy's ``dataset_*.json`` format (split "test");
- ImageNet: real photos carried by scikit-image and scikit-learn, labelled by hand with one
  ImageNet class each: a smoke-size set (5 images), not a benchmark;
- MMLU: the 281 real dev questions in the lm-eval wheel, as ``dev.jsonl`` (no test split);
- WikiText: none written; the task uses the held-out Wikipedia articles of ``ecoflap.core.datasets.corpora``.
Image folders are symbolic links to the packages' own files (copies where links are not possible).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ecoflap.core.cache import cache_dir

VERSION = 1
#: ImageNet smoke set: (package, file inside it) -> wnid (hand-assigned)
SMOKE_PHOTOS = {
    ("skimage", "data/chelsea.png"): "n02123045",  # tabby cat
    ("skimage", "data/coffee.png"): "n07920052",  # espresso
    ("skimage", "data/rocket.jpg"): "n03773504",  # missile (a rocket on its launch pad)
    ("skimage", "data/motorcycle_left.png"): "n03785016",  # moped
    ("sklearn", "datasets/images/china.jpg"): "n03877845",  # palace (the Summer Palace)
}


def default_dir(name: str, build: Callable[[Path], None]) -> Path:
    """``<cache>/eval-data/<name>-v1``, built once through a temporary folder and a rename."""
    target = cache_dir() / "eval-data" / f"{name}-v{VERSION}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        build(staging)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # another process won the race: keep its folder
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _link_images(folder: Path, split: str = "test") -> None:
    """``folder/images`` -> easy-vqa's image folder of ``split``."""
    from ecoflap.core.datasets import easy_vqa

    source = next(iter(easy_vqa.image_paths(split).values())).parent
    _link(source, folder / "images")


def _link(source: Path, link: Path) -> None:
    try:
        link.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    except OSError:
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, link)


VALIDATION_QUESTIONS = 1000  # easy-vqa has no validation split: a seeded sample of its train questions


def build_vqa(folder: Path, split: str = "test") -> None:
    from ecoflap.core.datasets import easy_vqa

    if split == "validation":
        questions = easy_vqa.question_sample(VALIDATION_QUESTIONS, seed=0, split="train")
    else:
        questions = list(easy_vqa.questions("test"))
    info = {"data_type": "easy-vqa", "data_subtype": split, "task_type": "Open-Ended"}
    rows = [{"question_id": i, "image_id": q.image_id, "question": q.question} for i, q in enumerate(questions)]
    anns = [
        {
            "question_id": i,
            "image_id": q.image_id,
            "answer_type": "yes/no" if q.answer in ("yes", "no") else "other",
            "question_type": " ".join(q.question.split()[:2]),
            "multiple_choice_answer": q.answer,
            "answers": [{"answer": q.answer, "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)],
        }
        for i, q in enumerate(questions)
    ]
    _write(folder / f"easyvqa_{split}_questions.json", info | {"questions": rows})
    _write(folder / f"easyvqa_{split}_annotations.json", info | {"annotations": anns})
    _write(folder / "answer_list.json", easy_vqa.answers())
    _link_images(folder, "train" if split == "validation" else "test")


def build_captions(folder: Path) -> None:
    from ecoflap.core.datasets import easy_vqa

    labels = easy_vqa.image_labels("test")
    paths = easy_vqa.image_paths("test")
    images = [{"id": i, "file_name": paths[i].name} for i in labels]
    anns = [{"id": i, "image_id": i, "caption": easy_vqa.caption(*label)} for i, label in labels.items()]
    _write(folder / "easyvqa_test_captions.json", {"images": images, "annotations": anns})
    _link_images(folder)


def build_retrieval(folder: Path) -> None:
    from ecoflap.core.datasets import easy_vqa

    labels = easy_vqa.image_labels("test")
    paths = easy_vqa.image_paths("test")
    images = [
        {"imgid": i, "filename": paths[i].name, "split": "test", "sentences": [{"raw": easy_vqa.caption(*label)}]}
        for i, label in labels.items()
    ]
    _write(folder / "dataset_easyvqa.json", {"dataset": "easy-vqa", "images": images})
    _link_images(folder)


def build_imagenet(folder: Path) -> None:
    for (package, relative), wnid in SMOKE_PHOTOS.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        source = Path(spec.submodule_search_locations[0]) / relative
        if source.is_file():
            (folder / "val" / wnid).mkdir(parents=True, exist_ok=True)
            _link(source, folder / "val" / wnid / source.name)


def build_mmlu(folder: Path) -> None:
    from ecoflap.evaluation.datasets.text import lm_eval_dev_questions

    lines = (json.dumps(q.record(), ensure_ascii=False) + "\n" for q in lm_eval_dev_questions())
    (folder / "dev.jsonl").write_text("".join(lines), encoding="utf-8")


BUILDERS = {
    "vqa": ("easy-vqa-vqav2", build_vqa, "easy-vqa test (VQAv2 format)"),
    "vqa:validation": (
        "easy-vqa-vqav2-validation",
        partial(build_vqa, split="validation"),
        f"easy-vqa validation: {VALIDATION_QUESTIONS} seeded train questions (VQAv2 format)",
    ),
    "captioning": ("easy-vqa-coco-captions", build_captions, "easy-vqa test images, label captions (COCO format)"),
    "retrieval": ("easy-vqa-karpathy", build_retrieval, "easy-vqa test images and captions (Karpathy format)"),
    "imagenet": ("imagenet-smoke", build_imagenet, "5 real photos from scikit-image/scikit-learn (smoke set)"),
    "mmlu": ("mmlu-lm-eval-dev", build_mmlu, "MMLU dev questions shipped in the lm-eval wheel (281)"),
}


def default_data(task: str) -> tuple[Path, str]:
    """(folder, description) of a task's default data (``task:split`` for another split), built on first use."""
    name, build, description = BUILDERS[task]
    return default_dir(name, build), description
