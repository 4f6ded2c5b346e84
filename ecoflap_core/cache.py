"""Where ecoflap keeps what it derives once (expanded model weights, parsed corpora)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The ecoflap cache folder: $ECOFLAP_CACHE, else ~/.cache/ecoflap."""
    return Path(os.environ.get("ECOFLAP_CACHE") or Path.home() / ".cache" / "ecoflap")


def publish_folder(target: Path, build: Callable[[Path], None], marker: str = "model.safetensors") -> Path:
    """``target``, built once: ``build`` fills a private temporary folder beside it, which is then renamed into
    place. Two jobs that build the same folder at once (two benchmarks on two cores) each use their own
    temporary folder; the one that renames second finds the other's complete folder and keeps it."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / marker).is_file():  # not another job's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def publish_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path`` written whole or not at all: ``write`` fills a private temporary file beside it, which then
    replaces it (two jobs writing the same cache file at once never interleave their bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
