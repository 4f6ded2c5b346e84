"""Serve the deployments of ``deployments/prefect.yaml`` (or one run config) on their schedules from this process.

``prefect deploy --all`` (run from the project root with ``--prefect-file deployments/prefect.yaml``)
registers the same deployments for workers in a work pool; this module is the one-machine service:
the flows run in subprocesses of ``ecoflap serve``, which needs a
Prefect server (``PREFECT_API_URL``) because schedules live on the server.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click
import yaml

from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.pipelines.run_cli import load_target, prefect_defaults
from ecoflap.pipelines.run_config import SweepConfig

DEPLOYMENTS_FILE = Path(__file__).with_name("prefect.yaml")


def read_deployments(path: Path | None = None) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of a prefect.yaml, with its ``definitions:`` anchors resolved."""
    path = path or DEPLOYMENTS_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EcoflapError(f"cannot read deployments file {path}: {str(exc).splitlines()[0]}") from None
    entries = data.get("deployments")
    if not isinstance(entries, list) or not entries:
        raise EcoflapError(f"{path} has no deployments: list")
    return entries


def load_flow(entrypoint: str) -> Any:
    """``pipelines/flows.py:sweep`` (a file path, as prefect.yaml writes it) -> the flow object."""
    file, sep, name = entrypoint.partition(":")
    if not sep:
        raise EcoflapError(f"entrypoint {entrypoint!r} must be PATH.py:FLOW")
    # prefect.yaml names files under the project root (pipelines/flows.py); they install as ecoflap.pipelines...
    module = importlib.import_module("ecoflap." + file.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _schedules(entry: dict[str, Any], cron: str | None) -> dict[str, Any]:
    if cron:
        return {"cron": cron}
    crons = [s["cron"] for s in entry.get("schedules") or [] if s.get("active", True) and "cron" in s]
    return {"cron": crons} if crons else {}


def file_deployments(path: Path | None = None, names: tuple[str, ...] = (), cron: str | None = None) -> list[Any]:
    """Runner deployments for the file's entries (``names`` only, if given); ``cron`` replaces their schedules."""
    entries = read_deployments(path)
    missing = set(names) - {e["name"] for e in entries}
    if missing:
        raise EcoflapError(f"no deployment {sorted(missing)[0]!r} in {path or DEPLOYMENTS_FILE}")
    chosen = [e for e in entries if not names or e["name"] in names]
    return [
        load_flow(entry["entrypoint"]).to_deployment(
            name=entry["name"],
            parameters=entry.get("parameters") or {},
            description=entry.get("description"),
            tags=entry.get("tags"),
            **_schedules(entry, cron),
        )
        for entry in chosen
    ]


def ad_hoc_deployment(target: Any, name: str, cron: str | None) -> Any:
    """A deployment of one validated run or sweep config (``ecoflap serve -C run.yaml --cron ...``)."""
    from ecoflap.pipelines.flows import prune_and_evaluate, sweep  # Prefect: heavy, only when serving

    chosen = sweep if isinstance(target, SweepConfig) else prune_and_evaluate
    schedule = {"cron": cron} if cron else {}
    return chosen.to_deployment(name=name, parameters={"config": target.model_dump()}, **schedule)


def serve(deployments: list[Any]) -> None:
    """Serve until interrupted: scheduled runs execute in subprocesses of this process."""
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise EcoflapError("serving schedules needs a Prefect server: run `prefect server start`, set PREFECT_API_URL")
    prefect_serve(*deployments)


@click.command("serve")
@click.option(
    "-f", "--file", "file", type=click.Path(path_type=Path), help="deployments file [deployments/prefect.yaml]"
)
@click.option("--name", "names", multiple=True, help="serve only these deployments (repeatable)")
@click.option("-C", "--config", "config_file", type=click.Path(path_type=Path), help="serve this run/sweep config")
@click.option("--cron", help="cron schedule (UTC) for -C, or replacing the file's schedules")
@click.option("--deployment-name", default="ecoflap-local", show_default=True, help="name for -C's deployment")
def serve_command(
    file: Path | None, names: tuple[str, ...], config_file: Path | None, cron: str | None, **kw: Any
) -> None:
    """Serve deployments on their schedules from this process (needs PREFECT_API_URL: a Prefect server)."""
    prefect_defaults()
    if config_file is not None:
        target = load_target(config_file, {}, ())
        deployments = [ad_hoc_deployment(target, kw["deployment_name"], cron)]
    else:
        deployments = file_deployments(file, names, cron)
    serve(deployments)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """``ecoflap serve``, added by this package as a command plugin (deployments sit above pipelines)."""
    cli.add_command(serve_command)
