"""Typed registries: what plugins registered, who registered it, and "did you mean" for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ecoflap.core.errors import UnknownNameError

T = TypeVar("T")


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a registered class, or of a model spec's loader (specs are instances)."""
    target = obj if hasattr(obj, "__qualname__") else getattr(obj, "load", type(obj))
    if not hasattr(target, "__qualname__"):  # a loader that is itself an instance (functools.partial, ...)
        target = type(target)
    return f"{target.__module__}.{target.__qualname__}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and the plugin (and distribution) that registered it."""

    name: str
    obj: T
    plugin: str
    distribution: str | None = None
    version: str | None = None

    @property
    def implementation(self) -> dict[str, str | None]:
        """Who implements this name: plugin, distribution, its version and the object's ``module.qualname``."""
        return {
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "object": qualified_name(self.obj),
        }


class Registry(Generic[T]):
    """Name -> object, with a base-class check at registration and a helpful unknown-name error."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, plugin: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register ``obj`` under ``name``; a name already taken by another plugin is an error."""
        if name in self._entries:
            other = self._entries[name].plugin
            raise ValueError(f"{self.kind} {name!r} from plugin {plugin!r} is already registered by {other!r}")
        self._entries[name] = Entry(name, obj, plugin, distribution, version)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}.{self.suggestions(name)}"

    def suggestions(self, name: str) -> str:
        """' Did you mean ...? Available: ...' for a name that is not registered."""
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"{hint} Available: {', '.join(names) or '(none)'}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
