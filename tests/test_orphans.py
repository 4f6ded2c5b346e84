"""A kill -9 of ``ecoflap run`` leaves no Prefect process behind (its temporary server dies with it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

ECOFLAP = str(Path(sys.executable).with_name("ecoflap"))
PREFECT_PROCESS = re.compile(r"prefect\.server\.api\.server:create_app|prefect (server|worker) start")


def prefect_processes(home: Path) -> list[psutil.Process]:
    """Live Prefect servers and workers started for this test: a Prefect command line, our PREFECT_HOME."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue  # dead, only not yet reaped
            if PREFECT_PROCESS.search(" ".join(process.info["cmdline"] or [])):
                if process.environ().get("PREFECT_HOME") == str(home):
                    found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def listing(processes: list[psutil.Process]) -> str:
    return "\n".join(f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:160]}" for p in processes) or "(none)"


def test_kill_9_of_ecoflap_run_leaves_no_prefect_server(tmp_path: Path, toy_text: str) -> None:
    home = tmp_path / "prefect"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(toy_text[i : i + 2000] for i in range(0, len(toy_text), 2000)))
    settings = {"model": "tiny-llama", "corpus": str(corpus), "nsamples": 4, "seqlen": 32, "score_nsamples": 2,
                "score_seqlen": 16, "tasks": ["wikitext"], "limit": 2,
                "database_url": f"sqlite:///{tmp_path / 'results.db'}", "output": str(tmp_path / "out")}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(home),
        "ECOFLAP_RUN_CACHE": str(tmp_path / "cache"),
        "ECOFLAP_THREADS": "1",
    }
    run = subprocess.Popen(
        [ECOFLAP, "run", "-C", str(tmp_path / "run.yaml")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in run.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any("Beginning flow run" in line for line in lines):  # the flow runs against the server
            assert run.poll() is None, f"ecoflap run exited {run.returncode}:\n" + "\n".join(lines)
            assert time.monotonic() < deadline, "no flow run within 240 s:\n" + "\n".join(lines)
            time.sleep(0.5)
        before = prefect_processes(home)
        assert [p.ppid() for p in before] == [run.pid], listing(before)  # one server, the run's child
        print(f"before kill -9 of {run.pid}:\n{listing(before)}")
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        gone = time.monotonic() + 15
        while prefect_processes(home) and time.monotonic() < gone:
            time.sleep(0.2)
        after = prefect_processes(home)
        print(f"after:\n{listing(after)}")
        assert after == [], listing(after)
    finally:
        run.kill()
        for process in prefect_processes(home):  # a failed test leaves nothing behind either
            process.kill()


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_the_temporary_server_is_bound_only_from_the_main_thread(monkeypatch: pytest.MonkeyPatch, thread: str) -> None:
    """The parent-death signal follows the thread that started the child: from another thread, Prefect's own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ecoflap.pipelines import prefect_server

    started: list[str] = []
    monkeypatch.setattr(prefect_server.BoundServer, "start", lambda self, timeout=None: started.append("start"))
    monkeypatch.setattr(prefect_server.BoundServer, "_instances", {})
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        if thread == "main":
            prefect_server.ensure_temporary_server()
        else:
            worker = threading.Thread(target=prefect_server.ensure_temporary_server)
            worker.start()
            worker.join()
    assert started == (["start"] if thread == "main" else [])


def test_temporary_servers_of_one_prefect_home_start_one_at_a_time(tmp_path: Path) -> None:
    """Servers sharing PREFECT_HOME migrate one SQLite database at start-up: a start waits for the lock that another
    process holds (without it, commands started at once failed with UNIQUE constraint / NoSuchTableError)."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from ecoflap.pipelines.prefect_server import one_start_at_a_time

    lock, marks = tmp_path / "ecoflap-server-start.lock", tmp_path / "marks"
    holder = (
        "import fcntl, pathlib, sys, time\n"
        f"handle = open({str(lock)!r}, 'a'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
        f"marks = pathlib.Path({str(marks)!r}); marks.write_text('in')\n"
        "time.sleep(1.0); marks.write_text('out'); fcntl.flock(handle, fcntl.LOCK_UN)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", holder])
    try:
        deadline = time.monotonic() + 30
        while not marks.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marks.read_text() == "in"  # the other process holds the lock now
        with temporary_settings(updates={PREFECT_HOME: tmp_path}), one_start_at_a_time():
            assert marks.read_text() == "out"  # entered only after it let go
    finally:
        child.wait(timeout=30)
