"""Errors that reach the user as one clear line (the CLI turns them into exit status 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EcoflapError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name. The message says how to fix it."""


class UnknownNameError(EcoflapError, KeyError):
    """A name that no registry holds; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadError(EcoflapError):
    """A plugin raised while loading (fatal only under --strict)."""


#: pydantic error types whose own message would not say what to fix
VALIDATION_MESSAGES = {"extra_forbidden": "unknown key", "missing": "missing key"}


def describe_validation_error(exc: ValidationError, what: str = "configuration", root: str = "config") -> str:
    """One line naming the first bad key: ``invalid <what>: <key>: <why> (and N more)``."""
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or root
    message = VALIDATION_MESSAGES.get(first["type"], first["msg"].removeprefix("Value error, "))
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid {what}: {key}: {message}{extra}"
