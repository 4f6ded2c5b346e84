"""Output folders that never destroy what the user did not ask to replace.

A run folder carries a marker file (``.ecoflap-run``). A folder is written by staging it beside its
destination and renaming it into place, so a reader sees the old folder or the whole new one. An
existing folder is replaced only when it holds the marker (or is a run folder of an older ecoflap,
recognised by its ``results.json``/``report.json``), or when the user said ``--overwrite``; the
current folder and the folders above it are never replaced. :func:`check_output` says all this
before any compute, in one line.

Staging names carry the writing process's id (``.NAME.staging-PID-XXXX``, ``.NAME.old-PID-XXXX``,
``.NAME.tmp-PID-XXXX``), so the leftovers of a killed process are recognised and removed at the next
write into the same parent folder; a previous folder set aside by a process killed between its two
renames is put back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import FOLDER_MODE, write_json

MARKER = ".ecoflap-run"
MARKER_SCHEMA = "ecoflap-run-folder/v1"
#: leftovers of a killed writer: ``.<name>.<kind>-<pid>-<random>``
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old|tmp)-(?P<pid>\d+)-[^.]+$")


# ---- what a folder is --------------------------------------------------------------------------------
def mark(folder: Path, kind: str = "run") -> None:
    """Write the marker that makes ``folder`` a run folder ecoflap may replace later."""
    write_json(folder / MARKER, {"schema": MARKER_SCHEMA, "kind": kind})


def is_run_folder(folder: Path) -> bool:
    """A folder ecoflap wrote: its marker, or the results/report of an ecoflap from before the marker."""
    if (folder / MARKER).is_file():
        return True
    return _legacy_document(folder / "results.json", "ecoflap") or _legacy_document(folder / "report.json", "method")


def _legacy_document(path: Path, key: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def _is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


# ---- checks before any compute ---------------------------------------------------------------------------
def check_output(output: Path, overwrite: bool = False) -> None:
    """Fail in one line unless ``output`` can be written without destroying anything the user kept."""
    path = output.expanduser()
    _check_not_a_parent(path, output)
    if path.is_symlink() and not path.is_dir():
        raise EcoflapError(f"output {output} is a link to no folder: remove it or choose another -o")
    if path.exists() and not path.is_dir():
        raise EcoflapError(f"output {output} is a file, not a folder: choose another -o (nothing was replaced)")
    if path.is_dir():
        _check_folder(path, output, overwrite)
    check_writable(path, f"the output {output}")


def _check_not_a_parent(path: Path, output: Path) -> None:
    resolved, here = path.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents or resolved == Path.home().resolve():
        where = "the current folder" if resolved == here else "a folder above the current one, or the home folder"
        raise EcoflapError(
            f"output {output} is {where}: ecoflap never replaces it; choose a new subfolder, such as -o runs/NAME"
        )


def _check_folder(path: Path, output: Path, overwrite: bool) -> None:
    try:
        ours = _is_empty(path) or is_run_folder(path)
    except OSError as exc:
        raise EcoflapError(f"cannot read the output folder {output}: {exc.strerror or exc}") from None
    if not ours and not overwrite:
        raise EcoflapError(
            f"{output} exists and is not an ecoflap run folder (no {MARKER} marker): choose another -o,"
            " or add --overwrite to replace its files (nothing was replaced)"
        )


def check_writable(path: Path, what: str) -> None:
    """``path`` can be created or written: the nearest existing folder at or above it is one this user may write."""
    existing = path.expanduser()
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        raise EcoflapError(f"cannot create {what}: {existing} is a file, not a folder")
    for folder in (existing, existing.parent) if existing == path.expanduser() else (existing,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise EcoflapError(f"cannot write {what}: {folder} is not writable by this user")


# ---- writing -----------------------------------------------------------------------------------------
@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A sibling temporary folder that becomes ``output`` when the block ends without an error.

    The previous ``output`` (checked by :func:`check_output` before) is set aside, the new one renamed
    into place, then the previous one deleted: an interrupted write never leaves a half-written folder
    where a finished one was.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(output.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.staging-{os.getpid()}-", dir=output.parent))
    try:
        yield staging
        os.chmod(staging, FOLDER_MODE)
        _replace(output, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_once(target: Path, build: Callable[[Path], None], marker: str = "model.safetensors") -> Path:
    """``target`` built once (a cache entry): ``build`` fills a staging folder beside it, renamed into place. Unlike
    :func:`staged_folder` it never replaces: two jobs that build the same entry at once each stage their own, and
    the one that renames second keeps the other's finished folder (which the first may already be reading)."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).is_file():  # not another job's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _replace(output: Path, staging: Path) -> None:
    if not (output.exists() or output.is_symlink()):
        staging.rename(output)
        return
    if output.is_symlink() or output.is_file():
        output.unlink()
        staging.rename(output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-{os.getpid()}-", dir=output.parent))
    output.rename(old / "folder")
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def sweep_leftovers(parent: Path) -> list[Path]:
    """Remove what killed writers left in ``parent``; put back a folder set aside before its replacement."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _LEFTOVER.match(entry.name)
            if match is None or _alive(int(match["pid"])):
                continue
            target = parent / match["name"]
            if match["kind"] == "old" and (entry / "folder").is_dir() and not (target.exists() or target.is_symlink()):
                (entry / "folder").rename(target)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
