"""A sweep through a served deployment: a real Prefect server on loopback, a real process worker, prefect.yaml.

``ecoflap run --grid sparsity=0.4,0.6 --deployment prune-and-evaluate/run`` from a folder of its own,
with a relative output folder, corpus and SQLite database: the three runs (dense baseline + 2 grid points)
execute in the worker's subprocesses (working folder: the project root) and land where the caller said.
In the default suite: both tests together take about 2 minutes on 2 quiet cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect_processes import ECOFLAP, PREFECT, ROOT, Process, environment, free_port, wait_healthy

from ecoflap.evaluation.results.store import ResultsStore

POOL = "ecoflap-gpu"  # the work pool of deployments/prefect.yaml
NOT_A_REPO = "fatal: not a git repository"


def api_post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for_pool(api: str, worker: Process, timeout: float) -> None:
    """The worker creates the pool (``--type process``) and reports itself online."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{api}/work_pools/{POOL}", timeout=10).status_code == 200:
            if any(w["status"] == "ONLINE" for w in api_post(api, f"work_pools/{POOL}/workers/filter", {})):
                return
        assert worker.popen.poll() is None, "the worker exited:\n" + worker.output()
        time.sleep(1)
    raise AssertionError("no online worker in the pool:\n" + worker.output())


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """A Prefect server (SQLite in a temporary PREFECT_HOME), a process worker, and the deployment ``run``."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect"
    env = environment(
        tmp_path,
        PREFECT_API_URL=api,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'server.db'}",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_UI_ENABLED="false",
        ECOFLAP_HOME=str(ROOT),  # prefect.yaml's pull step: the worker runs flows from the project root
    )
    server = Process([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"], env)
    processes = [server]
    try:
        wait_healthy(api, server, 180)
        worker = Process([PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "2"], env)
        processes.append(worker)
        wait_for_pool(api, worker, 180)
        deploy = Process([PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                          "--name", "run"], env)  # fmt: skip
        assert deploy.popen.wait(timeout=300) == 0, deploy.output()
        time.sleep(0.5)
        yield {"api": api, "env": env, "server": server, "worker": worker, "deploy": deploy}
    finally:
        for process in reversed(processes):
            process.kill()


def flow_runs(api: str, flow: str) -> list[dict[str, Any]]:
    return api_post(api, "flow_runs/filter", {"flows": {"name": {"any_": [flow]}}})


def run_sweep(served: dict[str, Any], caller: Path, settings: dict[str, Any], *args: str) -> Process:
    (caller / "sweep.yaml").write_text(yaml.safe_dump(settings))
    command = [ECOFLAP, "run", "-C", "sweep.yaml", "--deployment", "prune-and-evaluate/run", *args]
    sweep = Process(command, served["env"], cwd=caller)
    sweep.popen.wait(timeout=900)
    time.sleep(0.5)  # the reader thread takes the last lines
    return sweep


@pytest.mark.slow  # a served deployment and its worker: 80-120 s each on 2 cores
def test_a_two_point_sweep_runs_on_the_worker_and_lands_where_the_caller_said(
    served: dict[str, Any], tmp_path: Path, toy_text: str
) -> None:
    caller = tmp_path / "caller"  # the caller's folder: not the worker's (the project root)
    caller.mkdir()
    (caller / "corpus.txt").write_text("\n\n".join(toy_text[i : i + 2000] for i in range(0, len(toy_text), 2000)))
    settings = {"model": "tiny-llama", "corpus": "corpus.txt", "nsamples": 4, "seqlen": 32, "score_nsamples": 2,
                "score_seqlen": 16, "tasks": ["wikitext"], "limit": 2, "database_url": "sqlite:///results.db",
                "output": "sweep"}  # fmt: skip
    start = time.monotonic()
    sweep = run_sweep(served, caller, settings, "--grid", "sparsity=0.4,0.6", "--parallel", "2")
    took = time.monotonic() - start
    assert sweep.popen.returncode == 0, sweep.output()

    runs = ResultsStore(f"sqlite:///{caller / 'results.db'}").runs()
    assert len(runs) == 3 and all(r["status"] == "complete" for r in runs)
    assert sum(1 for r in runs if r["dense"]) == 1
    assert sorted(r["target_sparsity"] for r in runs if not r["dense"]) == [0.4, 0.6]
    assert [r["measured_sparsity"] for r in runs if r["dense"]] == [0]
    names = [
        "tiny-llama_dense",
        "tiny-llama_ecoflap-zeroth-order_wanda_s0.4",
        "tiny-llama_ecoflap-zeroth-order_wanda_s0.6",
    ]
    assert sorted(p.name for p in (caller / "sweep").iterdir()) == names
    for name in names:
        assert (caller / "sweep" / name / "results.json").is_file()
        stray = ROOT / "runs" / name / "results.json"  # the worker's working folder
        assert not stray.exists() or stray.stat().st_mtime < time.time() - took, f"results also written to {stray}"

    children = flow_runs(served["api"], "prune-and-evaluate")
    assert sorted(r["name"] for r in children) == names
    assert all(r["state_type"] == "COMPLETED" and r["deployment_id"] for r in children)
    parent = flow_runs(served["api"], "sweep")
    assert [r["state_type"] for r in parent] == ["COMPLETED"]
    progress = api_post(served["api"], "artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}})
    assert any(a["data"] == 100.0 and a["flow_run_id"] == parent[0]["id"] for a in progress), progress
    logs = "\n".join(p.output() for p in (sweep, served["worker"], served["deploy"]))
    assert NOT_A_REPO not in logs
    print(f"two-point sweep + dense baseline through the worker: {took:.0f} s")


@pytest.mark.slow  # a served deployment and its worker: 80-120 s each on 2 cores
def test_a_failing_child_fails_the_sweep_naming_it(served: dict[str, Any], tmp_path: Path) -> None:
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "alloc.json").write_text('{"no.such.layer": 0.5}')  # passes the checks; the model's layers refuse it
    settings = {"model": "tiny-llama", "allocator": "from-file", "allocation_file": "alloc.json", "nsamples": 4,
                "seqlen": 32, "tasks": ["wikitext"], "limit": 2, "database_url": "sqlite:///results.db",
                "output": "sweep", "dense_baseline": False}  # fmt: skip
    sweep = run_sweep(served, caller, settings, "--grid", "sparsity=0.5")
    assert sweep.popen.returncode == 1, sweep.output()
    errors = [line for line in sweep.lines if line.startswith("Error: ")]
    child = "tiny-llama_from-file_wanda_s0.5"
    assert len(errors) == 1 and errors[0].startswith(f"Error: 1 of 1 runs failed ({child}: Failed:"), sweep.output()
    assert f"sparsity file {caller / 'alloc.json'} does not match the model" in errors[0]  # the child's own message
    assert sweep.lines[-1] == errors[0] and "Traceback" not in "\n".join(sweep.lines[-5:])
    assert ResultsStore(f"sqlite:///{caller / 'results.db'}").runs() == []
    assert [r["state_type"] for r in flow_runs(served["api"], "prune-and-evaluate")] == ["FAILED"]
