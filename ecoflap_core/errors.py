"""Errors that reach the user as one clear line (the CLI turns them into exit status 1)."""

from __future__ import annotations


class EcoflapError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name. The message says how to fix it."""


class UnknownNameError(EcoflapError, KeyError):
    """A name that no registry holds; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadError(EcoflapError):
    """A plugin raised while loading (fatal only under --strict)."""
