"""ImageNet validation in the ImageFolder layout (``val/<wnid>/*.JPEG``) with the standard class index.

The class index is ``imagenet_class_index.json`` beside the data (``{"0": ["n01440764", "tench"], ...}``)
when present, else the standard 1000 synsets in index order that timm ships
(``timm/data/_info/imagenet_synsets.txt``). Class names for zero-shot prompts are open_clip's
``IMAGENET_CLASSNAMES`` (the CLIP paper's cleaned names, in the same index order).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.datasets import IMAGE_SUFFIXES, load_json, non_empty

CLASS_INDEX_FILE = "imagenet_class_index.json"


@dataclass
class ImageFolderSet:
    images: list[Path]
    labels: list[int]  # class indices
    wnids: list[str]  # the class index: wnid of each class
    class_names: list[str]  # a readable name per class (prompts and classifier label matching)
    source: Path

    def limit(self, n: int | None) -> ImageFolderSet:
        if n is None:
            return self
        return ImageFolderSet(self.images[:n], self.labels[:n], self.wnids, self.class_names, self.source)


def standard_wnids() -> list[str]:
    """The 1000 ImageNet-1k synsets in class-index order (timm's copy of the standard list)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError(f"the ImageNet class index needs {CLASS_INDEX_FILE} beside the data, or timm installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "_info" / "imagenet_synsets.txt"
    return path.read_text().split()


def clip_class_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def read_class_index(folder: Path) -> tuple[list[str], list[str]]:
    """(wnids, names) in class-index order: the data's own class index file, else the standard one."""
    for candidate in (folder / CLASS_INDEX_FILE, folder.parent / CLASS_INDEX_FILE):
        if candidate.is_file():
            data = load_json(candidate, "class index")
            try:
                rows = [data[str(i)] for i in range(len(data))]
                return [str(r[0]) for r in rows], [str(r[1]).replace("_", " ") for r in rows]
            except (KeyError, IndexError, TypeError):
                raise EcoflapError(f'{candidate}: expected {{"0": ["n01440764", "tench"], ...}}') from None
    return standard_wnids(), clip_class_names()


def read_image_folder(folder: Path) -> ImageFolderSet:
    """``folder/val/<wnid>/*`` (or ``folder/<wnid>/*``), images sorted by path within each class."""
    root = folder / "val" if (folder / "val").is_dir() else folder
    if not root.is_dir():
        raise EcoflapError(f"ImageNet folder not found: {folder}")
    wnids, names = read_class_index(folder)
    position = {wnid: i for i, wnid in enumerate(wnids)}
    images, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if class_dir.name not in position:
            raise EcoflapError(f"{class_dir}: {class_dir.name!r} is not a class of the class index")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += files
        labels += [position[class_dir.name]] * len(files)
    non_empty(images, "validation", root)
    return ImageFolderSet(images, labels, wnids, names, root)
