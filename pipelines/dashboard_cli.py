"""``ecoflap dashboard``: the read-only results dashboard in a local web server."""

from __future__ import annotations

import click

from ecoflap.core.errors import EcoflapError
from ecoflap.pipelines.results_cli import database_option

DASHBOARD_EXAMPLES = """
\b
Examples:
  ecoflap dashboard                                   # http://127.0.0.1:8050, the default results database
  ecoflap dashboard --database-url sqlite:///runs/results.db --port 8060
  ecoflap dashboard --database-url postgresql://user@db/ecoflap --host 0.0.0.0   # others on the network can read it
"""


@click.command("dashboard", epilog=DASHBOARD_EXAMPLES)
@database_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True, help="port to listen on")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="server log level")  # fmt: skip
def dashboard(db_url: str | None, host: str, port: int, log_level: str) -> None:
    """Leaderboard, curves against sparsity, runs and comparisons in the browser (read-only; GET pages only)."""
    import uvicorn

    from ecoflap.evaluation.dashboard.app import create_app
    from ecoflap.evaluation.dashboard.store import ReadOnlyStore
    from ecoflap.evaluation.results.store import NotADatabase, StoreUnavailable, masked, resolve_url

    url = resolve_url(db_url)
    try:
        ReadOnlyStore(url).close()
    except NotADatabase:
        raise  # a file of another kind, a folder: no page could ever show it
    except StoreUnavailable as exc:  # not there yet, a server down, an older schema: the pages say so until fixed
        click.echo(f"Warning: {exc}; the pages will say so until it can be read", err=True)
    _check_port(host, port)
    click.echo(f"ecoflap dashboard on http://{host}:{port}/ over {masked(url)} (read-only; Ctrl+C to stop)", err=True)
    uvicorn.run(create_app(url.render_as_string(hide_password=False)), host=host, port=port, log_level=log_level)


def _check_port(host: str, port: int) -> None:
    """Fail in one line when the address is taken or cannot be bound (uvicorn would log a traceback-free exit 1)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise EcoflapError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def register(cli: click.Group) -> None:
    cli.add_command(dashboard)
