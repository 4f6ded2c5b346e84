"""The ``ecoflap`` command line (click). User mistakes end in one line and exit status 1."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ecoflap.core.errors import EcoflapError
from ecoflap.pipelines import dashboard_cli, eval_cli, prune_cli, results_cli, run_cli
from ecoflap.pipelines.common import registries as loaded_plugins


class Root(click.Group):
    """Turns EcoflapError (and plugin mistakes) into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcoflapError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ecoflap")
def cli() -> None:
    """ecoflap: ECoFLaP coarse-to-fine layer-wise pruning of (vision-)language models."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--strict", is_flag=True, help="fail if a plugin fails to load")
def plugins_command(as_json: bool, strict: bool) -> None:
    """List plugins, their versions and what each registered."""
    from dataclasses import asdict

    infos = [asdict(info) for info in loaded_plugins(strict).plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        status = f"  FAILED: {info['error']}" if info["error"] else ""
        click.echo(f"{info['name']} ({info['distribution'] or '-'} {info['version'] or ''}){status}")
        for kind, names in info["registered"].items():
            click.echo(f"    {kind}: {', '.join(names)}")


@cli.command("ls")
@click.argument("kind", type=click.Choice(["pruners", "scorers", "allocators", "models", "tasks"]))
def ls_command(kind: str) -> None:
    """List registered pruners, scorers, allocators, models or tasks."""
    registry = getattr(loaded_plugins(False), kind)
    for entry in registry.entries():
        doc = getattr(entry.obj, "description", None) or (entry.obj.__doc__ or "").strip().split("\n")[0]
        click.echo(f"{entry.name:<16} {entry.plugin:<14} {doc}")


def _plugin_commands() -> None:
    """Sub-commands from plugins (``register_commands``)."""
    try:
        registries = loaded_plugins(False)
    except EcoflapError:
        return
    if registries.manager is not None:
        registries.manager.hook.register_commands(cli=cli)


cli.add_command(prune_cli.prune)
for _module in (run_cli, results_cli, eval_cli, dashboard_cli):
    _module.register(cli)


def main() -> None:
    _plugin_commands()
    cli(prog_name="ecoflap")


if __name__ == "__main__":
    # `python -m ecoflap.pipelines.cli`: run the importable module, not this __main__ copy, so that the
    # command modules above (which import ecoflap.pipelines.cli) see one fully initialised module
    from ecoflap.pipelines.cli import main as module_main

    sys.exit(module_main())
