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


THREADS_ENV = ("ECOFLAP_THREADS", "OMP_NUM_THREADS")
MAX_THREADS = 4096


def threads() -> None:
    """Torch threads = the cores this process may use, unless ECOFLAP_THREADS / OMP_NUM_THREADS say."""
    import torch

    torch.set_num_threads(wanted_threads() or max(len(os.sched_getaffinity(0)), 1))


def wanted_threads() -> int | None:
    """The thread count ECOFLAP_THREADS (else OMP_NUM_THREADS) asks for; a bad value is one error line."""
    for name in THREADS_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_THREADS:
                raise EcoflapError(f"{name}={value!r}: give a whole number of threads from 1 to {MAX_THREADS}")
            return int(value)
    return None


# ---- config files --------------------------------------------------------------------------------------
#: a config file expands to at most this many values (YAML aliases can make a small file huge)
MAX_CONFIG_VALUES = 100_000


def read_yaml(path: Path | None) -> dict[str, Any]:
    """A YAML config file as a mapping of option names (``-`` read as ``_``); any mistake is one line."""
    if path is None:
        return {}
    try:
        data = parse_yaml(_read_text(path))
    except EcoflapError as exc:
        raise EcoflapError(f"config file {path} {exc}") from None
    if data is None:
        raise EcoflapError(f"config file {path} holds no settings: give KEY: VALUE lines (e.g. sparsity: 0.5)")
    if not isinstance(data, dict):
        raise EcoflapError(f"config file {path} must be a mapping of keys to values, not a {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise EcoflapError("is a folder: give a YAML file")
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EcoflapError(f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise EcoflapError(f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values (safe types only); keys must be names, given once, and aliases may not
    expand the document beyond MAX_CONFIG_VALUES values (the "billion laughs")."""
    import yaml

    loader = _strict_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node, {}, set()) > MAX_CONFIG_VALUES:
            raise EcoflapError(f"expands to more than {MAX_CONFIG_VALUES} values through YAML aliases")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise EcoflapError(f"is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise EcoflapError(f"is not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values a YAML node stands for once its aliases are expanded; a node inside itself fails."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise EcoflapError("has a YAML alias inside the value it names (a loop)")
    open_nodes.add(id(node))
    value = node.value if isinstance(node.value, list) else []
    children = [n for item in value for n in (item if isinstance(item, tuple) else (item,))]
    sizes[id(node)] = 1 + sum(expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    return sizes[id(node)]


@functools.cache
def _strict_loader() -> type:
    """yaml.SafeLoader refusing keys that are not names and keys given twice (YAML would keep the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise EcoflapError(f"has the key {key!r} (line {line}): keys are names, like sparsity")
                if key in seen:
                    raise EcoflapError(f"gives the key {key!r} twice (lines {seen[key]} and {line})")
                seen[key] = line
            return super().construct_mapping(node, deep)

    return StrictLoader


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
