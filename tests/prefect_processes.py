"""Commands in subprocesses for the tests that need real processes: Prefect servers, workers, ``ecoflap``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ECOFLAP = str(Path(sys.executable).with_name("ecoflap"))
PREFECT = str(Path(sys.executable).with_name("prefect"))


class Process:
    """A command in its own process group, its merged output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if re.search(pattern, line)]
            if found:
                return found[0]
            if self.popen.poll() is not None:
                time.sleep(0.5)  # let the reader finish
                found = [line for line in self.lines if re.search(pattern, line)]
                if found:
                    return found[0]
                raise AssertionError(f"exited {self.popen.returncode} before {pattern!r}:\n" + self.output())
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + self.output())

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def output(self) -> str:
        return "\n".join(self.lines[-60:])


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return (
        os.environ
        | {
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "ECOFLAP_RUN_CACHE": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "ECOFLAP_THREADS": os.environ.get("ECOFLAP_THREADS", "1"),
            # the tests' plugins (conftest puts them on PYTHONPATH) stay visible to the subprocesses
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
        }
        | extra
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(api: str, server: Process, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.popen.poll() is not None:
            raise AssertionError("prefect server exited:\n" + server.output())
        time.sleep(1)
    raise AssertionError("prefect server not healthy:\n" + server.output())
