"""Checks of a local Hugging Face model folder before any compute: one clear line instead of a traceback later.

``check_folder`` reads what loading would read, without the weights: ``config.json`` (a JSON object that
transformers accepts and can build a model from, on the meta device), the headers of the safetensors
files (a truncated or garbage file fails here), the tokenizer and the image processor. Every failure
is ``cannot load the model in DIR: <reason>``. Results are cached per folder state, so the several
look-ups of one run check a folder once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")
PROCESSOR_FILES = ("preprocessor_config.json",)


@dataclass(frozen=True)
class FolderNeeds:
    """What one kind of folder must hold: the transformers class it builds, a tokenizer, an image processor."""

    model_class: str
    tokenizer: bool = True
    processor: bool = False


class FolderError(EcoflapError):
    """A model folder that cannot be loaded; the message says which file and why."""


def cannot_load(path: Path, reason: str) -> FolderError:
    return FolderError(f"cannot load the model in {path}: {reason}")


def folder_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a folder: {} when absent; one error line when it is not a JSON object."""
    file = path / "config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise cannot_load(path, f"config.json is not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise cannot_load(path, f"config.json holds a JSON {type(config).__name__}, not an object")
    return config


def json_object(path: Path, name: str) -> dict[str, Any]:
    """The JSON object in the file ``name`` of the model folder ``path``; one error line otherwise."""
    try:
        value = json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise cannot_load(path, f"{name} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise cannot_load(path, f"{name} holds a JSON {type(value).__name__}, not an object")
    return value


def check_part(path: Path, part: str, needs: FolderNeeds) -> None:
    """A Hugging Face sub-folder (``vision/``, ``language/``) of a composite model folder."""
    if not (path / part).is_dir():
        raise cannot_load(path, f"no {part}/ folder")
    try:
        check_folder(path / part, needs)
    except FolderError as exc:
        reason = str(exc).split(": ", 1)[1]
        raise cannot_load(path, f"{part}/: {reason}") from None


@dataclass(frozen=True)
class SavedLayout:
    """A composite folder written by an adapter's ``save``: a JSON record, one safetensors file of its own
    weights, and Hugging Face sub-folders (``vision/``, ``language/``)."""

    record: str
    weights: str
    parts: dict[str, FolderNeeds] = field(default_factory=dict)
    #: reads the record's fields (raising KeyError / TypeError when one is missing or mistyped)
    read_record: Callable[[dict[str, Any]], object] = lambda record: None

    def matches(self, path: Path) -> bool:
        """A folder of this layout (its record file exists); a broken one fails here, before any compute."""
        if not (path / self.record).is_file():
            return False
        self.check(path)
        return True

    def check(self, path: Path) -> dict[str, Any]:
        """The folder's record, once it and every part of the folder read."""
        record = json_object(path, self.record)
        try:
            self.read_record(record)
        except (KeyError, TypeError) as exc:
            raise cannot_load(path, f"{self.record} lacks or mistypes {exc}") from None
        if not (path / self.weights).is_file():
            raise cannot_load(path, f"no {self.weights}")
        check_safetensors(path, path / self.weights)
        for part, needs in self.parts.items():
            check_part(path, part, needs)
        return record


def architectures(config: dict[str, Any]) -> list[str]:
    """The ``architectures`` of a config (a list of names; anything else reads as none)."""
    value = config.get("architectures")
    return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []


def check_folder(path: Path, needs: FolderNeeds) -> None:
    """Everything loading would read, except the tensors themselves; raises ``cannot load the model in ...``."""
    _check_cached(path, needs, _state(path))


def _state(path: Path) -> tuple[tuple[str, int, int], ...]:
    """The folder's files with sizes and times: a changed folder is checked again."""
    try:
        return tuple(sorted((p.name, s.st_size, s.st_mtime_ns) for p in path.iterdir() for s in [p.stat()]))
    except OSError as exc:
        raise cannot_load(path, first_line(exc)) from None


@functools.lru_cache(maxsize=64)
def _check_cached(path: Path, needs: FolderNeeds, state: tuple) -> None:
    folder_config(path)
    _check_files(path, needs)
    _check_weights(path)
    _check_with_transformers(path, needs)


def _check_files(path: Path, needs: FolderNeeds) -> None:
    wanted = [("config.json",), WEIGHT_FILES]
    wanted += [TOKENIZER_FILES] if needs.tokenizer else []
    wanted += [PROCESSOR_FILES] if needs.processor else []
    for names in wanted:
        if not any((path / n).is_file() for n in names):
            raise cannot_load(path, f"no {' or '.join(names)}")


def _check_weights(path: Path) -> None:
    """Every safetensors file has a whole header that covers the file (a truncated file fails); bin files
    are not empty."""
    for name in _weight_files(path):
        file = path / name
        if not file.is_file():
            raise cannot_load(path, f"the weights index names {name}, which is missing")
        if file.suffix == ".safetensors":
            check_safetensors(path, file)
        elif file.stat().st_size == 0:
            raise cannot_load(path, f"{name} is empty")


def _weight_files(path: Path) -> list[str]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file() and not (path / index_name.removesuffix(".index.json")).is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                return sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise cannot_load(path, f"{index_name} is not a weights index ({first_line(exc)})") from None
    return [n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]


def check_safetensors(path: Path, file: Path) -> None:
    """A whole safetensors file: its header reads and covers the file (a truncated or garbage file fails)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise cannot_load(path, f"{file.name} is not a whole safetensors file ({first_line(exc)})") from None


def _check_with_transformers(path: Path, needs: FolderNeeds) -> None:
    """transformers reads the config, builds the model on the meta device (no memory), loads the tokenizer."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        model_class = getattr(transformers, needs.model_class)
        with torch.device("meta"):
            getattr(model_class, "from_config", model_class)(config)
        if needs.tokenizer:
            transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except FolderError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises about a user's folder is one line
        raise load_failure(path, exc) from None


def load_failure(path: Path, exc: BaseException) -> FolderError:
    """What a library raised while reading a user's folder, as one line."""
    return cannot_load(path, f"{type(exc).__name__}: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
