"""A plugin that adds a command and then raises in ``register_commands``: none of its commands may remain."""

from __future__ import annotations

from typing import Any

import click

from ecoflap.core.hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    @cli.command("half-added")
    def half_added() -> None:
        click.echo("this command must not be added")

    raise RuntimeError("bad_commands cannot set up its commands")
