"""What the evaluation tasks share: their data folder, task arguments, image loading, batching, skips."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import TaskOptions


class TaskSkipped(EcoflapError):
    """The model cannot do this task on this data (the reason is recorded, the run goes on)."""


def data_folder(task: str, options: TaskOptions, split: str | None = None) -> tuple[Path, str, bool]:
    """(folder, description, is_default): ``--data-dir`` (or ``data=`` task argument), else the shipped default
    (of ``split`` where the task's default data has one besides test)."""
    given = options.extra.get("data") or options.data_dir
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            raise EcoflapError(f"{task}: data folder not found: {path}")
        return path, str(path), False
    from ecoflap.evaluation.datasets.defaults import default_data

    folder, description = default_data(task if split in (None, "test") else f"{task}:{split}")
    return folder, description, True


#: the whole-number task arguments and their ranges (the same meaning in every task that reads them)
INT_ARGS = {
    "batch_size": (1, 4096),
    "max_length": (2, 1_048_576),  # a window predicts at least one token from one token of context
    "tokens": (1, 2**31 - 1),
    "num_fewshot": (0, 100),
    "templates": (0, 1000),
}
CHOICE_ARGS = {"mode": ("generate", "rank", "both")}


def arg(options: TaskOptions, key: str, default: Any, kind: type = str) -> Any:
    """A task argument (``--task-arg key=value``) converted to ``kind``; a bad value is one error line."""
    value = options.extra.get(key, default)
    if value is None:
        return value
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        try:
            value = kind(str(value).strip() if kind is int else value)
        except (TypeError, ValueError):
            raise EcoflapError(f"task argument {key}={value!r} is not a valid {kind.__name__}") from None
    return _in_range(key, value)


def _in_range(key: str, value: Any) -> Any:
    low, high = INT_ARGS.get(key, (None, None))
    if low is not None and not low <= value <= high:
        raise EcoflapError(f"task argument {key}={value!r} must be a whole number from {low} to {high}")
    if key in CHOICE_ARGS and value not in CHOICE_ARGS[key]:
        raise EcoflapError(f"task argument {key}={value!r} must be one of {', '.join(CHOICE_ARGS[key])}")
    return value


def check_args(options: TaskOptions) -> None:
    """Every known task argument given is of its type and in its range (before any model loads)."""
    for key in options.extra:
        if key in INT_ARGS:
            arg(options, key, None, int)
        elif key in CHOICE_ARGS:
            arg(options, key, None)


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


def check_images(paths: Sequence[Path]) -> None:
    """Every file is a whole image PIL can decode (checked without decoding the pixels); else one error line."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise EcoflapError(
                f"{path} is not a readable image: {str(exc).splitlines()[0] or type(exc).__name__}"
            ) from None


def model_name(adapter: object) -> str:
    return str(getattr(adapter, "model_id", type(adapter).__name__))
