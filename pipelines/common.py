"""What every ``ecoflap`` sub-command shares: the loaded plugins, torch's threads, config files and flags."""

from __future__ import annotations

import functools
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

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


# ---- options generated from the config models: one place for each default and help text --------------
class GroupedCommand(click.Command):
    """``--help`` lists the options under their groups (``Option.group``), then the rest."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, "group", None) or "Options", []).append(record)
        for name, records in sorted(groups.items(), key=lambda item: item[0] == "Options"):
            with formatter.section(name):
                formatter.write_dl(records)


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return ""
    if field.default is None or (field.description or "").endswith("]"):
        return ""
    return f" [{str(field.default).lower() if isinstance(field.default, bool) else field.default}]"


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, multiple) of a field annotation: Literal -> Choice, list[X] -> multiple X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if typing.get_origin(annotation) is list:
        return _click_type(typing.get_args(annotation)[0])[0], True
    return {int: int, float: float, bool: bool}.get(annotation, str), False


def field_option(name: str, field: FieldInfo, group: str) -> click.Option:
    """``--name`` for one config field; unset flags stay None, so a config file's value survives."""
    flag = "--" + name.replace("_", "-")
    kind, multiple = _click_type(field.annotation)
    help_text = (field.description or "") + _default_text(field)
    if kind is bool:
        option = click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
    else:
        option = click.Option([flag, name], type=kind, multiple=multiple, default=None, help=help_text)
    option.group = group  # type: ignore[attr-defined]
    return option


def config_options(model: type[BaseModel], skip: tuple[str, ...] = ()) -> Any:
    """A decorator adding one option per field of ``model`` (grouped as ``model.GROUPS`` says)."""
    groups = {name: group for group, names in getattr(model, "GROUPS", {}).items() for name in names}

    def decorate(command: Any) -> Any:
        for name, field in reversed(list(model.model_fields.items())):
            if name not in skip:
                command.__click_params__ = getattr(command, "__click_params__", [])
                command.__click_params__.append(field_option(name, field, groups.get(name, "Options")))
        return command

    return decorate
