"""The ``ecoflap`` command line (click). User mistakes end in one line and exit status 1."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ecoflap.core.errors import EcoflapError
from ecoflap.core.plugins import add_commands, raise_first_failure
from ecoflap.pipelines import arena_cli, dashboard_cli, eval_cli, prune_cli, results_cli, run_cli
from ecoflap.pipelines.common import registries as loaded_plugins


class Root(click.Group):
    """Turns EcoflapError, plugin mistakes and mistyped flags into one ``Error:`` line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcoflapError as exc:
            raise click.ClickException(str(exc)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # click's own: the usage text and exit status 2
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            raise click.ClickException(f"{exc.format_message()} (see {where} --help)") from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ecoflap")
def cli() -> None:
    """ecoflap: ECoFLaP coarse-to-fine layer-wise pruning of (vision-)language models."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--strict", is_flag=True, help="fail if a plugin failed to load or in any hook")
def plugins_command(as_json: bool, strict: bool) -> None:
    """List plugins, their versions and what each registered (commands included)."""
    from dataclasses import asdict

    registries = loaded_plugins(False)  # the command failures are recorded on it, by main()
    if strict:
        raise_first_failure(registries)
    infos = [asdict(info) for info in registries.plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        status = f"  FAILED {info['failed']}: {info['error']}" if info["error"] else ""
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


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """Plugin warnings as ``warning: ...`` lines on stderr, each time it happens."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)
        yield


def _plugin_commands() -> None:
    """Sub-commands from plugins (``register_commands``), each plugin's on its own: a failing one is skipped."""
    try:
        registries = loaded_plugins(False)
    except EcoflapError:
        return  # the command that needs the plugins reports it as its one Error line; --help still works
    with _warnings_on_stderr():
        try:
            add_commands(registries, cli)
        except EcoflapError as exc:  # an ECOFLAP_OVERRIDE for a command that cannot be honoured
            warnings.warn(f"{exc}; no plugin command was added", RuntimeWarning, stacklevel=1)


cli.add_command(prune_cli.prune)
for _module in (run_cli, arena_cli, results_cli, eval_cli, dashboard_cli):
    _module.register(cli)


def main() -> None:
    _plugin_commands()
    cli(prog_name="ecoflap")


if __name__ == "__main__":
    # `python -m ecoflap.pipelines.cli`: run the importable module, not this __main__ copy, so that the
    # command modules above (which import ecoflap.pipelines.cli) see one fully initialised module
    from ecoflap.pipelines.cli import main as module_main

    sys.exit(module_main())
