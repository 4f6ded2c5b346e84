"""Slow flow checks in subprocesses: kill -9 during the fine step then resume; a served, scheduled deployment."""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_processes import ECOFLAP, PREFECT, Process, environment, free_port, wait_healthy

from ecoflap.evaluation.results.store import ResultsStore

pytestmark = pytest.mark.slow


def seconds(line: str) -> float:
    return float(re.search(r"in ([0-9.]+) s", line).group(1))


def test_kill_9_during_the_fine_step_then_the_same_command_finishes_from_the_cached_scores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    config = tmp_path / "run.yaml"
    settings = {
        "model": "smollm2-135m",
        "score_nsamples": 2,
        "score_seqlen": 64,
        "nsamples": 16,
        "seqlen": 256,
        "tasks": ["wikitext"],
        "limit": 2,
        "database_url": url,
        "output": str(tmp_path / "out"),
    }
    config.write_text(yaml.safe_dump(settings))
    env = environment(tmp_path)
    first = Process([ECOFLAP, "run", "-C", str(config)], env)
    try:
        coarse = first.wait_for(r"coarse scores: \d+ tensors in", 1500)
        first.wait_for(r"pruning blocks: \d+/", 600)  # a quarter of the blocks pruned: mid fine step
        assert not any("fine step: measured" in line for line in first.lines)
    finally:
        first.kill()
    assert first.popen.returncode == -signal.SIGKILL
    assert ResultsStore(url).runs() == []  # nothing recorded by the killed run
    start = time.monotonic()
    second = Process([ECOFLAP, "run", "-C", str(config)], env)
    assert second.popen.wait(timeout=1500) == 0, second.output()
    took = time.monotonic() - start
    time.sleep(0.5)
    log = "\n".join(second.lines)  # all of it: the step lines come before the tasks' progress bars
    assert "coarse-scores: Cached" in log and "coarse scores: computing" not in log
    assert "fine step: measured sparsity" in log  # the interrupted step ran again, whole
    runs = ResultsStore(url).runs()
    assert len(runs) == 1 and runs[0]["status"] == "complete" and runs[0]["metrics"]
    assert (tmp_path / "out" / "results.json").exists()
    print(f"first run: coarse step {seconds(coarse):.1f} s before the kill; second run: {took:.1f} s in all")


def next_minute(margin_s: int = 20) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    return (now + dt.timedelta(seconds=60 + margin_s)).replace(second=0, microsecond=0)


def flow_runs(api: str, deployment: str) -> list[Any]:
    import httpx

    found = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"name": {"any_": [deployment]}}}, timeout=10)
    found.raise_for_status()
    return found.json()


def test_a_served_deployment_runs_on_its_schedule_and_records_its_results(tmp_path: Path, toy_text: str) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = environment(tmp_path, PREFECT_API_URL=api, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    server = Process([PREFECT, "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)], env)  # fmt: skip
    served = None
    try:
        wait_healthy(api, server, 180)
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n\n".join(toy_text[i : i + 2000] for i in range(0, len(toy_text), 2000)))
        url = f"sqlite:///{tmp_path / 'results.db'}"
        settings = {"model": "tiny-llama", "corpus": str(corpus), "nsamples": 4, "seqlen": 32, "score_nsamples": 2,
                    "score_seqlen": 16, "tasks": ["wikitext"], "limit": 2, "database_url": url,
                    "output": str(tmp_path / "out")}  # fmt: skip
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(settings))
        when = next_minute()
        cron = f"{when.minute} {when.hour} * * *"
        served = Process([ECOFLAP, "serve", "-C", str(config), "--cron", cron, "--deployment-name", "nightly"], env)
        deadline = when + dt.timedelta(minutes=6)
        runs: list[dict[str, Any]] = []
        while dt.datetime.now(dt.timezone.utc) < deadline and not runs:
            time.sleep(5)
            if served.popen.poll() is not None:
                raise AssertionError("ecoflap serve exited:\n" + served.output())
            done = [r for r in flow_runs(api, "nightly") if r["state_type"] == "COMPLETED"]
            runs = ResultsStore(url).runs() if done else []
        assert runs, served.output()
        assert len(runs) == 1 and runs[0]["status"] == "complete" and runs[0]["model"] == "tiny-llama"
        completed = [r for r in flow_runs(api, "nightly") if r["state_type"] == "COMPLETED"]
        assert dt.datetime.fromisoformat(completed[0]["expected_start_time"]) == when
    finally:
        if served is not None:
            served.kill()
        server.kill()
