"""Plugin loading (pluggy + the ``ecoflap`` entry-point group) and the registries it fills.

Built-in plugins are declared as entry points in ecoflap's own pyproject.toml, so they load through
the same path as a third party's. Each plugin loads and runs each hook in its own try/except: a
plugin that raises (``sys.exit`` included) is named and skipped with a warning, or fails the
command under ``strict``.
``ECOFLAP_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which plugins load.

Names are owned, not first-come: every plugin's registrations are staged first, then each name
goes to its one claimant. A name claimed by a built-in plugin (ecoflap's own distribution) and by
third-party plugins stays the built-in's and the third-party plugins fail; a name claimed only by
third-party plugins goes to none of them. Either way the failure names every claimant, whatever
the entry points' order. ``ECOFLAP_OVERRIDE=KIND:NAME=PLUGIN[,...]`` (kind: pruner, scorer,
allocator, model, task or command) gives a contested name to the plugin the user chose.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ecoflap.core import hookspecs
from ecoflap.core.adapters import ModelSpec
from ecoflap.core.allocation import Allocator
from ecoflap.core.errors import PluginLoadError, UnknownNameError
from ecoflap.core.pruning import LayerPruner
from ecoflap.core.registry import Registry
from ecoflap.core.scoring import Scorer
from ecoflap.core.tasks import Task

ENTRY_POINT_GROUP = "ecoflap"
#: the distribution whose plugins are the built-ins: they keep their names unless the user overrides
BUILTIN_DISTRIBUTION = "ecoflap"
OVERRIDE_ENV = "ECOFLAP_OVERRIDE"
#: the registry kinds a name can be registered under (``Registries.implementation`` takes these)
KINDS = ("pruner", "scorer", "allocator", "model", "task")
REGISTER_HOOKS = {f"register_{kind}s": kind for kind in KINDS}
_OVERRIDE_ITEM = re.compile(rf"^({'|'.join(KINDS)}|command):([^=\s]+)=([^=\s]+)$")


@dataclass
class PluginInfo:
    """What ``ecoflap plugins`` shows for one plugin."""

    name: str
    version: str | None
    distribution: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    #: where it failed: "to load", "in register_pruners", "to register" (a contested name), ...
    failed: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def label(self) -> str:
        """``'name' (distribution version)``: how messages name a plugin."""
        if self.distribution is None:
            return f"{self.name!r} (not from an installed distribution)"
        return f"{self.name!r} ({self.distribution} {self.version or '?'})"


@dataclass(frozen=True)
class Claim:
    """One object a plugin registered under a name of one kind (staged until every plugin has spoken)."""

    kind: str
    name: str
    obj: Any
    plugin: str


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

    def registry(self, kind: str) -> Registry[Any]:
        """The registry of ``kind`` (pruner, scorer, allocator, model or task)."""
        if kind not in KINDS:
            raise UnknownNameError(f"unknown registry kind {kind!r}. Available: {', '.join(KINDS)}")
        return getattr(self, kind + "s")

    def implementation(self, kind: str, name: str) -> dict[str, str | None]:
        """Who implements ``name``: ``{"plugin", "distribution", "version", "object"}`` (object: module.qualname).

        Two different classes behind one name always give two different dicts, so a cache key that
        holds this dict is never shared between them.
        """
        return self.registry(kind).entry(name).implementation


# ---- failures: named, contained, fatal only under strict ------------------------------------------------
#: what became of a failed plugin, where it is not "and was skipped"
_OUTCOMES = {"in register_commands": "and its commands were not added"}


def failure_message(info: PluginInfo, strict: bool = False) -> str:
    """The one line that reports a failed plugin (a warning, or the error under ``strict``)."""
    outcome = "(--strict)" if strict else _OUTCOMES.get(info.failed or "", "and was skipped")
    return f"ecoflap plugin {info.label} failed {info.failed} {outcome}: {info.error}"


def _fail(info: PluginInfo, stage: str, reason: str, strict: bool, pm: pluggy.PluginManager | None = None) -> None:
    """Record that ``info``'s plugin failed at ``stage``; warn, or raise under ``strict``; stop calling its hooks."""
    info.error, info.failed = reason, stage
    if pm is not None and pm.get_plugin(info.name) is not None:
        pm.unregister(name=info.name)
    if strict:
        raise PluginLoadError(failure_message(info, strict=True))
    warnings.warn(failure_message(info), RuntimeWarning, stacklevel=3)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def raise_first_failure(reg: Registries) -> None:
    """Under ``--strict``: the first failed plugin (in load order) as a PluginLoadError."""
    for info in reg.plugins.values():
        if info.error:
            raise PluginLoadError(failure_message(info, strict=True))


# ---- loading ----------------------------------------------------------------------------------------
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


def _info(ep: metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(ep.name, dist.version if dist else None, dist.metadata["Name"] if dist else None)


def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points, built-ins first, then by distribution and name: not by ``sys.path`` order."""

    def order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:
        dist = ep.dist.metadata["Name"] if ep.dist else ""
        return dist != BUILTIN_DISTRIBUTION, dist, ep.name

    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=order)


def load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], strict: bool) -> None:
    """Import every plugin of the entry-point group, each in its own try/except (``sys.exit`` included)."""
    for ep in _entry_points():
        if not _allowed(ep.name):
            continue
        info = _info(ep)
        if ep.name in infos:  # a second distribution's plugin of the same name: never replaces the first
            infos[f"{info.distribution}:{ep.name}"] = info
            _fail(info, "to load", f"the plugin name {ep.name!r} is already taken by {infos[ep.name].label}", strict)
            continue
        infos[ep.name] = info
        try:
            plugin = ep.load()
            _check_api_version(plugin, ep.name)
            pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
            _fail(info, "to load", _reason(exc), strict)


def _hookimpls(pm: pluggy.PluginManager, hook_name: str, plugin: str) -> list[Any]:
    return [impl for impl in getattr(pm.hook, hook_name).get_hookimpls() if impl.plugin_name == plugin]


def _live(reg: Registries) -> Iterator[PluginInfo]:
    """The plugins that have not failed, in load order."""
    return (info for info in list(reg.plugins.values()) if info.error is None)


# ---- staging: every plugin's registrations, checked at once ---------------------------------------
def _registrar(registry: Registry[Any], info: PluginInfo, staged: list[Claim]) -> Callable[[Any], None]:
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
        if any(c.kind == registry.kind and c.name == name for c in staged):
            raise ValueError(f"plugin {info.name!r} registered the {registry.kind} {name!r} twice")
        staged.append(Claim(registry.kind, name, obj, info.name))

    return register


def _stage_registrations(pm: pluggy.PluginManager, reg: Registries, strict: bool) -> list[Claim]:
    """Call each plugin's register hooks on its own; a plugin that raises in any of them stages nothing."""
    claims: list[Claim] = []
    for info in _live(reg):
        staged: list[Claim] = []
        for hook_name, kind in REGISTER_HOOKS.items():
            try:
                for impl in _hookimpls(pm, hook_name, info.name):
                    impl.function(register=_registrar(reg.registry(kind), info, staged))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                _fail(info, f"in {hook_name}", _reason(exc), strict, pm)
                break
        else:
            claims += staged
    return claims


# ---- contested names -----------------------------------------------------------------------------------
def read_overrides() -> dict[tuple[str, str], str]:
    """``ECOFLAP_OVERRIDE=pruner:wanda=PLUGIN,...`` as {(kind, name): plugin}; a malformed value is an error."""
    overrides: dict[tuple[str, str], str] = {}
    for item in filter(None, (part.strip() for part in os.environ.get(OVERRIDE_ENV, "").split(","))):
        match = _OVERRIDE_ITEM.match(item)
        if match is None:
            raise PluginLoadError(
                f"{OVERRIDE_ENV}: cannot read {item!r}: write KIND:NAME=PLUGIN[,...] with KIND one of "
                f"{', '.join(KINDS)}, command (e.g. {OVERRIDE_ENV}=pruner:wanda=my_plugin)"
            )
        kind, name, plugin = match.groups()
        if (kind, name) in overrides:
            raise PluginLoadError(f"{OVERRIDE_ENV} names {kind} {name!r} twice: keep one")
        overrides[kind, name] = plugin
    return overrides


def _contest(claimants: list[Claim], infos: dict[str, PluginInfo], override: str | None) -> dict[str, str]:
    """The plugins that must fail over one contested name, each with a message naming every claimant."""
    kind, name = claimants[0].kind, claimants[0].name
    if len(claimants) == 1 or override in {c.plugin for c in claimants}:
        return {}
    builtins = [c for c in claimants if infos[c.plugin].builtin]
    if len(builtins) == 1:
        owner = infos[builtins[0].plugin].label
        return {
            c.plugin: f"{kind} {name!r} from plugin {infos[c.plugin].label} is already registered by the built-in "
            f"plugin {owner}; to use the plugin's instead set {OVERRIDE_ENV}={kind}:{name}={c.plugin}"
            for c in claimants
            if c is not builtins[0]
        }
    labels = ", ".join(infos[c.plugin].label for c in claimants)
    return {
        c.plugin: f"{kind} {name!r} is registered by several plugins ({labels}): none of them is used; "
        f"choose one with {OVERRIDE_ENV}={kind}:{name}=PLUGIN"
        for c in claimants
    }


def _by_name(claims: list[Claim]) -> dict[tuple[str, str], list[Claim]]:
    grouped: dict[tuple[str, str], list[Claim]] = {}
    for claim in claims:
        grouped.setdefault((claim.kind, claim.name), []).append(claim)
    return grouped


def _losers(claims: list[Claim], infos: dict[str, PluginInfo], overrides: dict[tuple[str, str], str]) -> dict[str, str]:
    """Plugin -> why it fails: repeated until no contest is left (a failed plugin withdraws all its claims)."""
    failed: dict[str, str] = {}
    while True:
        live = [c for c in claims if c.plugin not in failed]
        new = {}
        for key, claimants in _by_name(live).items():
            new |= {p: m for p, m in _contest(claimants, infos, overrides.get(key)).items() if p not in new}
        if not new:
            return failed
        failed |= new


def _winners(claims: list[Claim], overrides: dict[tuple[str, str], str]) -> list[Claim]:
    """One claim per name (after ``_losers``: a name still held by several went to the override's plugin)."""
    return [
        next((c for c in claimants if c.plugin == overrides.get(key)), claimants[0])
        for key, claimants in _by_name(claims).items()
    ]


def _check_overrides(
    overrides: dict[tuple[str, str], str], kept: list[Claim], failures: dict[str, str], kinds: tuple[str, ...]
) -> None:
    """An override that cannot be honoured is an error: the user asked for that implementation."""
    for (kind, name), plugin in overrides.items():
        holders = [c.plugin for c in kept if (c.kind, c.name) == (kind, name)]
        if kind not in kinds or plugin in holders:
            continue
        if plugin in failures:
            reason = f"that plugin failed: {failures[plugin]}"
        else:
            reason = f"that plugin does not register it (registered by: {', '.join(map(repr, holders)) or 'none'})"
        raise PluginLoadError(f"{OVERRIDE_ENV} asks for {kind} {name!r} from plugin {plugin!r}, but {reason}")


def _settle(claims: list[Claim], reg: Registries, kinds: tuple[str, ...], strict: bool) -> list[Claim]:
    """Fail the plugins that lost a contested name (in load order); the claims that win their names.

    An override that cannot be honoured is an error raised before any of those failures is reported.
    """
    overrides = read_overrides()
    losers = _losers(claims, reg.plugins, overrides)
    kept = [c for c in claims if c.plugin not in losers]
    failures = {name: info.error for name, info in reg.plugins.items() if info.error} | losers
    _check_overrides(overrides, kept, failures, kinds)
    stage = "in register_commands" if kinds == ("command",) else "to register"
    for info in list(reg.plugins.values()):
        if info.name in losers:
            _fail(info, stage, losers[info.name], strict, reg.manager)
    return _winners(kept, overrides)


def _commit(reg: Registries, claims: list[Claim], strict: bool) -> None:
    for claim in _settle(claims, reg, KINDS, strict):
        info = reg.plugins[claim.plugin]
        reg.registry(claim.kind).add(claim.name, claim.obj, info.name, info.distribution, info.version)
        info.registered.setdefault(claim.kind + "s", []).append(claim.name)


def load_plugins(strict: bool = False, extra: list[tuple[str, object]] | None = None) -> Registries:
    """Load entry-point plugins (and ``extra`` (name, plugin) pairs, for tests) into fresh registries."""
    read_overrides()  # a malformed override is an error before any plugin loads
    pm = _new_manager()
    reg = Registries(manager=pm)
    load_entry_points(pm, reg.plugins, strict)
    for name, plugin in extra or []:
        reg.plugins[name] = PluginInfo(name, None, None)
        pm.register(plugin, name=name)
    _commit(reg, _stage_registrations(pm, reg, strict), strict)
    return reg


# ---- commands --------------------------------------------------------------------------------------------
def _staged_commands(impl: Any, cli: Any) -> dict[str, Any]:
    """The commands one ``register_commands`` adds or replaces, called on a copy of the root group."""
    staging = copy.copy(cli)
    staging.commands = dict(cli.commands)
    impl.function(cli=staging)
    removed = sorted(set(cli.commands) - set(staging.commands))
    if removed:
        raise ValueError(f"it removed ecoflap's command(s) {', '.join(removed)}")
    return {name: cmd for name, cmd in staging.commands.items() if cli.commands.get(name) is not cmd}


def add_commands(reg: Registries, cli: Any, strict: bool = False) -> None:
    """Call each plugin's ``register_commands`` on its own and add the commands that survive to ``cli``.

    ``cli`` is the root click group. A plugin that raises, or whose command would replace one of
    ``cli``'s own (``prune``, ``run``, ...), adds none; a command name two plugins add is contested
    like a registry name.
    """
    if reg.manager is None:
        return
    claims: list[Claim] = []
    for info in _live(reg):
        try:
            staged = {
                k: v
                for impl in _hookimpls(reg.manager, "register_commands", info.name)
                for k, v in _staged_commands(impl, cli).items()
            }
            taken = sorted(set(staged) & set(cli.commands))
            if taken:
                raise ValueError(f"its command(s) {', '.join(taken)} would replace ecoflap's own; rename them")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            _fail(info, "in register_commands", _reason(exc), strict, reg.manager)
            continue
        claims += [Claim("command", name, cmd, info.name) for name, cmd in staged.items()]
    for claim in _settle(claims, reg, ("command",), strict):
        cli.add_command(claim.obj, claim.name)
        reg.plugins[claim.plugin].registered.setdefault("commands", []).append(claim.name)
