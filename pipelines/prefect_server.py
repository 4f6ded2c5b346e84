"""Prefect's temporary API server for one ``ecoflap`` command, bound to the life of that command's process.

With no ``PREFECT_API_URL``, Prefect 3.9 runs flows against a temporary server that it starts as a
subprocess (``SubprocessASGIServer``: uvicorn serving ``prefect.server.api.server:create_app`` on SQLite
in ``PREFECT_HOME``) and stops at exit. A ``kill -9`` skips the exit handlers, so every killed command
left that server (about 200 MB) running for good. Here the same server is started before the flow, from
the main thread, with the kernel told to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``).
Prefect's own calls find this instance: its servers are kept per port, and this one is the default (no port).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    get_current_settings,
)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux (looked up here: a forked child must not load libraries), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when ``parent`` dies (and exits at once if it already has)."""

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class BoundServer(SubprocessASGIServer):
    """Prefect's temporary server, started with the command Prefect 3.9 uses, killed when its parent dies."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        prctl = _prctl()
        assert prctl is not None  # ensure_temporary_server starts this class only where prctl exists
        args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on"]  # fmt: skip
        env = os.environ | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env |= get_current_settings().to_environment_variables(exclude_unset=True)
        return subprocess.Popen(args, env=env, preexec_fn=die_with_parent(os.getpid(), prctl))  # noqa: PLW1509


def ensure_temporary_server() -> str | None:
    """Start the temporary server for this process now, bound to it; its API URL (None: a server is configured).

    Only from the main thread (the kernel's parent-death signal follows the thread that started the child)
    and where ``prctl`` exists; elsewhere Prefect starts its own when the first flow runs, as before.
    """
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    if threading.current_thread() is not threading.main_thread() or _prctl() is None:
        return None
    server = BoundServer()  # the default instance: Prefect's SubprocessASGIServer() returns it from now on
    with one_start_at_a_time():
        server.start()
    return server.api_url


@contextlib.contextmanager
def one_start_at_a_time() -> Iterator[None]:
    """Hold an exclusive lock on ``PREFECT_HOME/ecoflap-server-start.lock`` while a server starts. Temporary servers
    of one ``PREFECT_HOME`` share its SQLite database, and each migrates it at start-up: commands started at once
    raced there (``UNIQUE constraint failed: block_type.slug``, ``NoSuchTableError: block``). The second start
    waits for the first to be serving, then finds the database migrated."""
    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with (home / "ecoflap-server-start.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
