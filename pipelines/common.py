"""What every ``ecoflap`` sub-command shares: the loaded plugins, torch's threads, config files and flags."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import click

from ecoflap.core.errors import EcoflapError


@functools.cache
def registries(strict: bool) -> Any:
    """Plugins, loaded once per process; load failures are reported once, as warnings."""
    from ecoflap.core.plugins import load_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)
        return load_plugins(strict=strict)


def threads() -> None:
    """Torch threads = the cores this process may use, unless ECOFLAP_THREADS / OMP_NUM_THREADS say."""
    import torch

    wanted = os.environ.get("ECOFLAP_THREADS") or os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(wanted) if wanted else max(len(os.sched_getaffinity(0)), 1))


def read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EcoflapError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EcoflapError(f"config file {path} must be a mapping of keys to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def merge(file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The config file, overridden by every flag given on the command line."""
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    return file_values | {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}
