"""Plugin loading (pluggy + the ``ecoflap`` entry-point group) and the registries it fills.

Built-in plugins are declared as entry points in ecoflap's own pyproject.toml, so they load through
the same path as a third party's. Each plugin loads in its own try/except: a plugin that raises is
named and skipped with a warning, or fails the command under ``strict``.
``ECOFLAP_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which plugins load.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ecoflap.core import hookspecs
from ecoflap.core.adapters import ModelSpec
from ecoflap.core.allocation import Allocator
from ecoflap.core.errors import PluginLoadError
from ecoflap.core.pruning import LayerPruner
from ecoflap.core.registry import Registry
from ecoflap.core.scoring import Scorer
from ecoflap.core.tasks import Task

ENTRY_POINT_GROUP = "ecoflap"


@dataclass
class PluginInfo:
    """What ``ecoflap plugins`` shows for one plugin."""

    name: str
    version: str | None
    distribution: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registries:
    """Everything the loaded plugins registered."""

    pruners: Registry[type[LayerPruner]] = field(default_factory=lambda: Registry("pruner", LayerPruner))
    scorers: Registry[type[Scorer]] = field(default_factory=lambda: Registry("scorer", Scorer))
    allocators: Registry[type[Allocator]] = field(default_factory=lambda: Registry("allocator", Allocator))
    models: Registry[ModelSpec] = field(default_factory=lambda: Registry("model", ModelSpec))
    tasks: Registry[type[Task]] = field(default_factory=lambda: Registry("task", Task))
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    manager: pluggy.PluginManager | None = None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _allowed(name: str) -> bool:
    allow = os.environ.get("ECOFLAP_LOAD_PLUGINS")
    return allow is None or name in {n.strip() for n in allow.split(",")}


def _check_api_version(plugin: object, name: str) -> None:
    wanted = getattr(plugin, "ECOFLAP_API_VERSION", None)
    if wanted is not None and str(wanted).split(".")[0] != hookspecs.API_VERSION.split(".")[0]:
        raise PluginLoadError(f"plugin {name!r} needs ecoflap plugin API {wanted}, this is {hookspecs.API_VERSION}")


def _fail(info: PluginInfo, exc: BaseException, strict: bool) -> None:
    info.error = f"{type(exc).__name__}: {exc}"
    message = f"ecoflap plugin {info.name!r} failed to load and was skipped: {info.error}"
    if strict:
        raise PluginLoadError(message.replace("and was skipped", "(--strict)")) from exc
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], strict: bool) -> None:
    """Import every plugin of the entry-point group, each in its own try/except."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(ep.name) or ep.name in infos:
            continue
        dist = ep.dist
        info = PluginInfo(ep.name, dist.version if dist else None, dist.metadata["Name"] if dist else None)
        infos[ep.name] = info
        try:
            plugin = ep.load()
            _check_api_version(plugin, ep.name)
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            _fail(info, exc, strict)


def _registrar(registry: Registry[Any], info: PluginInfo, staged: list[tuple[str, Any]]) -> Callable[[Any], None]:
    """The ``register`` callback handed to one plugin's hook: checks each object at once."""

    def register(obj: Any) -> None:
        if registry.base is not object:
            ok = isinstance(obj, registry.base) or (isinstance(obj, type) and issubclass(obj, registry.base))
            if not ok:
                raise TypeError(
                    f"plugin {info.name!r} registered {obj!r} as a {registry.kind}; expected a {registry.base.__name__}"
                )
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"plugin {info.name!r} registered a {registry.kind} without a name")
        staged.append((name, obj))

    return register


def _commit(registry: Registry[Any], info: PluginInfo, staged: list[tuple[str, Any]]) -> None:
    """Add one plugin's registrations all together, or none of them (a taken name fails the plugin)."""
    for name, _ in staged:
        if name in registry:
            other = registry.entry(name).plugin
            raise ValueError(f"{registry.kind} {name!r} from plugin {info.name!r} is already registered by {other!r}")
    for name, obj in staged:
        registry.add(name, obj, info.name)
        info.registered.setdefault(registry.kind + "s", []).append(name)


def _call_register_hooks(pm: pluggy.PluginManager, reg: Registries, strict: bool) -> None:
    hooks = {
        "register_pruners": reg.pruners,
        "register_scorers": reg.scorers,
        "register_allocators": reg.allocators,
        "register_models": reg.models,
        "register_tasks": reg.tasks,
    }
    for hook_name, registry in hooks.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = reg.plugins.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, None, None))
            if info.error:
                continue
            staged: list[tuple[str, Any]] = []
            try:
                impl.function(register=_registrar(registry, info, staged))
                _commit(registry, info, staged)
            except Exception as exc:
                _fail(info, exc, strict)


def load_plugins(strict: bool = False, extra: list[tuple[str, object]] | None = None) -> Registries:
    """Load entry-point plugins (and ``extra`` (name, plugin) pairs, for tests) into fresh registries."""
    pm = _new_manager()
    reg = Registries(manager=pm)
    load_entry_points(pm, reg.plugins, strict)
    for name, plugin in extra or []:
        reg.plugins[name] = PluginInfo(name, None, None)
        pm.register(plugin, name=name)
    _call_register_hooks(pm, reg, strict)
    return reg
