"""Where a number came from: weights hash, library versions, git hash, data fingerprints, cache keys.

One module for every entry point (prune, run, eval, record, the benchmarks), torch-free at import so
the results store and the dashboard can use it; ``weights_hash`` imports torch when it is called.
JSON writes are atomic (a temporary file, then a rename; folders: ``ecoflap.core.outputs``) and readable
by the group: a reader sees the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ecoflap.core.errors import EcoflapError

LIBRARIES = ("ecoflap", "torch", "transformers", "lm-eval", "prefect", "pluggy", "pydantic", "salesforce-lavis")
FILE_MODE = 0o644
FOLDER_MODE = 0o755


# ---- keys --------------------------------------------------------------------------------------------
def cache_key(*parts: Any) -> str:
    """sha256 over the canonical JSON of ``parts`` (sorted keys): the same settings give the same key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# The coarse-step scorers' defaults: PruneConfig's fields take them from here, and a method label leaves them out
# (kept in this torch-free module so that the results store and the dashboard need not import the config).
SCORER_DEFAULTS: dict[str, Any] = {
    "zo_eps": 1e-3,
    "zo_noise": 1,
    "zo_group": 1,
    "zo_level": "sampled",  # chosen on easy-vqa validation questions (benchmarks/zo_choice.py)
    "zo_difference": "forward",
    "zo_variant": "weight-scaled",  # the seeds rule's least bad (benchmarks/zo_choice.py --choose); was grad-mag-abs
    "zo_head": "full",
    "fo_variant": "grad-mag-abs",
}
# ecoflap's smoothing window over adjacent blocks when the scores are zeroth-order estimates (chosen on validation,
# benchmarks/zo_choice.py); runs recorded before it have no ``allocator_options``: they used 1.
ZO_SMOOTH_BLOCKS = 5
# Zeroth-order settings added after runs were recorded: a method identity holds them only off the value those
# runs used (so their keys stay valid), and a reader fills a missing one with that value.
ZO_KEYS_BEFORE: dict[str, str] = {"zo_variant": "grad-only", "zo_difference": "central", "zo_head": "full"}


def method_key(method: Mapping[str, Any] | None) -> str | None:
    """sha256 hex of the method's canonical JSON (sorted keys, no spaces); None for a dense model.

    Migration 0002 keeps a frozen copy of this formula to backfill recorded runs: change both or neither.
    """
    if method is None:
        return None
    text = json.dumps(method, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---- identities --------------------------------------------------------------------------------------
def weights_hash(model: Any, stored: Callable[[str], Any] | None = None) -> str:
    """sha256 over every tensor of ``model.state_dict()`` (name, dtype, shape, bytes). A tensor left on the meta
    device (a block kept on disk by ``--offload disk``) is read by ``stored(name)``, one at a time: the hash is
    that of the model in memory, without ever holding it whole."""
    import torch  # the only heavy import of this module: callers that hash weights have torch loaded

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_meta:
            if stored is None:
                raise ValueError(f"{name} is on the meta device and no reader of the stored weights was given")
            tensor = stored(name)
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def fingerprint(source: str | Path | None) -> str | None:
    """A data set name as it is, or ``path@sha256`` over the contents of the file (or folder) it names."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return str(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file_sha256(file).encode())
    return f"{source}@{digest.hexdigest()}"


def file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes (a weights file, recorded in its JSON sidecar)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """The installed versions of the libraries that change a number, Python's, and the machine's."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found | {"python": platform.python_version()} | machine()


def machine() -> dict[str, str]:
    """What else changes a float: the processor, and (where torch computed the numbers) the kernel set torch
    dispatches to and its thread count. The same run key on another machine may differ in the last bits,
    and a metric on a knife edge (generation at high sparsity) by a few points."""
    found = {"machine": platform.machine(), "cpu": cpu_name()}
    torch = sys.modules.get("torch")  # torch-free at import: only a process that ran torch has its kernels
    if torch is not None:
        found["torch-cpu-capability"] = torch.backends.cpu.get_cpu_capability()
        found["torch-threads"] = str(torch.get_num_threads())
    return found


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_hash() -> str | None:
    """The short commit of the ecoflap source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ---- atomic writes -----------------------------------------------------------------------------------
def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path`` written whole or not at all: ``write`` fills a temporary file beside it (``.NAME.tmp-PID-XXXX``,
    swept by ``outputs.sweep_leftovers`` if the writer is killed), mode 0644, which then replaces ``path``; two
    processes writing the same file at once never interleave their bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """JSON through :func:`write_file`; mode 0644 (group and others may read results)."""
    path = Path(path)
    try:
        return write_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8"))
    except OSError as exc:
        raise EcoflapError(f"cannot write {path}: {exc.strerror or exc}") from None


def canonical(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` through JSON (tuples -> lists, paths -> strings): what a stored document will hold."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))
