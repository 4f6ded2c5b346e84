"""Readers of the evaluation tasks' standard public formats, and the shipped defaults converted into them.

Every reader takes local paths only and fails with one :class:`EcoflapError` line naming the file
and what is wrong (missing, not JSON, a missing field, an image that is not there, no examples).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def load_json(path: Path, what: str = "data file") -> Any:
    """A JSON (or JSON-lines) file, with one clear error for a missing or malformed file."""
    if not path.is_file():
        raise EcoflapError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EcoflapError(f"{what} {path} is not valid JSON: {str(exc).splitlines()[0]}") from None


def require(record: Any, key: str, path: Path, where: str) -> Any:
    """``record[key]``, or an error naming the file and the record that lacks it."""
    if not isinstance(record, dict) or key not in record:
        raise EcoflapError(f"{path}: {where} has no {key!r} field")
    return record[key]


def find_one(folder: Path, patterns: tuple[str, ...], what: str) -> Path:
    """The single file of ``folder`` matching the first pattern that matches anything."""
    if not folder.is_dir():
        raise EcoflapError(f"data folder not found: {folder}")
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise EcoflapError(f"{folder} holds several {what} files ({names}): name one with --task-arg")
    raise EcoflapError(f"no {what} file in {folder} (looked for {', '.join(patterns)})")


def non_empty(items: list, what: str, source: Path) -> list:
    if not items:
        raise EcoflapError(f"{source}: the {what} split is empty")
    return items


class ImageIndex:
    """Image files of a folder (recursively) by relative path, by file stem and by the number a stem ends in."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise EcoflapError(f"image folder not found: {folder}")
        self.folder = folder
        self.by_stem: dict[str, Path] = {}
        self.by_number: dict[int, Path] = {}
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                self.by_stem.setdefault(path.stem, path)
                digits = _TRAILING_DIGITS.search(path.stem)
                if digits:
                    self.by_number.setdefault(int(digits.group(1)), path)

    def find(self, image_id: Any, source: Path) -> Path:
        """The file of an image id (``"n1234"``, ``42`` or ``"COCO_val2014_000000000042"``)."""
        key = str(image_id)
        if key in self.by_stem:
            return self.by_stem[key]
        if key.isdigit() and int(key) in self.by_number:
            return self.by_number[int(key)]
        raise EcoflapError(f"{source} names image {image_id!r}, which is not in {self.folder}")

    def file(self, relative: str, source: Path) -> Path:
        """An image named by its path relative to the folder (or by its file name anywhere below it)."""
        path = self.folder / relative
        if path.is_file():
            return path
        stem = Path(relative).stem
        if stem in self.by_stem:
            return self.by_stem[stem]
        raise EcoflapError(f"{source} names image {relative!r}, which is not in {self.folder}")


def limited(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all when None)."""
    return items if limit is None else items[:limit]
