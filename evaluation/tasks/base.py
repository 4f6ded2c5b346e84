"""What the evaluation tasks share: their data folder, task arguments, image loading, batching, skips."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import TaskOptions


class TaskSkipped(EcoflapError):
    """The model cannot do this task on this data (the reason is recorded, the run goes on)."""


def data_folder(task: str, options: TaskOptions) -> tuple[Path, str, bool]:
    """(folder, description, is_default): ``--data-dir`` (or ``data=`` task argument), else the shipped default."""
    given = options.extra.get("data") or options.data_dir
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            raise EcoflapError(f"{task}: data folder not found: {path}")
        return path, str(path), False
    from ecoflap.evaluation.datasets.defaults import default_data

    folder, description = default_data(task)
    return folder, description, True


def arg(options: TaskOptions, key: str, default: Any, kind: type = str) -> Any:
    """A task argument (``--task-arg key=value``) converted to ``kind``; a bad value is one error line."""
    value = options.extra.get(key, default)
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise EcoflapError(f"task argument {key}={value!r} is not a valid {kind.__name__}") from None


def path_arg(options: TaskOptions, key: str) -> Path | None:
    value = options.extra.get(key)
    return Path(value).expanduser() if value else None


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size < 1:
        raise EcoflapError(f"batch_size must be at least 1, not {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_images(paths: Sequence[Path]) -> list[Any]:
    """PIL RGB images; an unreadable file is one error line naming it."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise EcoflapError(f"cannot read the image {path}: {str(exc).splitlines()[0]}") from None
    return images


def model_name(adapter: object) -> str:
    return str(getattr(adapter, "model_id", type(adapter).__name__))
