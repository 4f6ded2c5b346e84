"""Image-caption data for captioning and retrieval: COCO caption JSON, Karpathy splits, LAVIS's lists.

Accepted files (the format is recognised from its keys):
- COCO / NoCaps: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``;
- Karpathy (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images": [{"filename", "filepath"?,
  "split", "sentences": [{"raw"}]}]}``, one split chosen (``test`` by default);
- LAVIS's Karpathy lists (``coco_karpathy_test.json``, ``flickr30k_test.json``): ``[{"image", "caption"}]``.
Images live under ``images/`` beside the file (or the folder itself, or ``--task-arg images=DIR``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.datasets import ImageIndex, find_one, load_json, non_empty, require


@dataclass
class CaptionSet:
    format: str  # "coco", "karpathy" or "lavis"
    image_ids: list[Any]
    images: list[Path]
    references: list[list[str]]  # the reference captions of each image
    source: Path

    def limit(self, n: int | None) -> CaptionSet:
        if n is None:
            return self
        return CaptionSet(self.format, self.image_ids[:n], self.images[:n], self.references[:n], self.source)


def read_captions(folder_or_file: Path, images: Path | None = None, split: str = "test") -> CaptionSet:
    """The caption file of a folder (or the file itself), in any of the accepted formats."""
    path = folder_or_file
    if path.is_dir():
        path = find_one(path, ("*captions*.json", "dataset_*.json", "*karpathy*.json", "*.json"), "caption")
    data = load_json(path, "caption file")
    index = ImageIndex(images or _image_folder(path.parent))
    if isinstance(data, list):
        return _lavis(path, data, index)
    if isinstance(data, dict) and "annotations" in data:
        return _coco(path, data, index)
    if isinstance(data, dict) and "images" in data:
        return _karpathy(path, data, index, split)
    raise EcoflapError(f"{path}: not a COCO, Karpathy or LAVIS caption file (no 'annotations' or 'images')")


def _image_folder(folder: Path) -> Path:
    return folder / "images" if (folder / "images").is_dir() else folder


def _coco(path: Path, data: dict, index: ImageIndex) -> CaptionSet:
    files = {}
    for i, image in enumerate(require(data, "images", path, "the file")):
        files[require(image, "id", path, f"image {i}")] = require(image, "file_name", path, f"image {i}")
    references: dict[Any, list[str]] = {}
    for i, ann in enumerate(require(data, "annotations", path, "the file")):
        image_id = require(ann, "image_id", path, f"annotation {i}")
        if image_id not in files:
            raise EcoflapError(f"{path}: annotation {i} names image {image_id!r}, which 'images' does not list")
        references.setdefault(image_id, []).append(str(require(ann, "caption", path, f"annotation {i}")))
    ids = non_empty([i for i in files if i in references], "caption", path)
    paths = [index.file(files[i], path) for i in ids]
    return CaptionSet("coco", ids, paths, [references[i] for i in ids], path)


def _karpathy(path: Path, data: dict, index: ImageIndex, split: str) -> CaptionSet:
    ids, paths, references = [], [], []
    for i, image in enumerate(require(data, "images", path, "the file")):
        if require(image, "split", path, f"image {i}") != split:
            continue
        name = require(image, "filename", path, f"image {i}")
        relative = f"{image['filepath']}/{name}" if image.get("filepath") else name
        sentences = [
            str(require(s, "raw", path, f"image {i} sentence")) for s in require(image, "sentences", path, f"image {i}")
        ]
        ids.append(image.get("cocoid", image.get("imgid", i)))
        paths.append(index.file(relative, path))
        references.append(sentences)
    non_empty(ids, repr(split), path)
    return CaptionSet("karpathy", ids, paths, references, path)


def _lavis(path: Path, data: list, index: ImageIndex) -> CaptionSet:
    grouped: dict[str, list[str]] = {}
    for i, record in enumerate(data):
        caption = require(record, "caption", path, f"entry {i}")
        captions = caption if isinstance(caption, list) else [caption]
        grouped.setdefault(str(require(record, "image", path, f"entry {i}")), []).extend(str(c) for c in captions)
    names = non_empty(list(grouped), "caption", path)
    return CaptionSet("lavis", names, [index.file(n, path) for n in names], [grouped[n] for n in names], path)
