"""A sweep's runs as flow runs of a deployment (picked up by workers), awaited here.

Each run is started with :func:`prefect.deployments.run_deployment` (``timeout=0``: it returns once the
flow run exists), at most ``parallel`` at a time, and awaited by polling the API. A run goes out with
everything a worker elsewhere needs to put its results where the caller said: absolute output folder,
absolute input paths, the caller's results database and (when set) the caller's ``$ECOFLAP_RUN_CACHE``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling
from sqlalchemy.engine import make_url

from ecoflap.core.errors import EcoflapError
from ecoflap.core.job import IMAGE_TEXT_SOURCES
from ecoflap.evaluation.results.database import ENV_URL
from ecoflap.pipelines import steps
from ecoflap.pipelines.run_config import RunConfig

Step = dict[str, Any]
POLL_S = 2.0
CORPUS_NAMES = ("wikipedia", *IMAGE_TEXT_SOURCES)


class Progress(Protocol):
    def update(self, done: int) -> None: ...


@dataclass
class Child:
    """One run of the sweep: its name, its config as sent, its flow run once started, its final state."""

    name: str
    config: RunConfig
    flow_run: FlowRun | None = None

    def finished(self) -> bool:
        return self.flow_run is not None and self.flow_run.state is not None and self.flow_run.state.is_final()


def through_deployment(
    deployment: str,
    runs: list[RunConfig],
    names: list[str],
    parallel: int,
    timeout_s: float | None,
    progress: Progress,
) -> list[Step]:
    """Start the runs on the deployment's workers and wait for every one; their summaries (or failures)."""
    children = [Child(name, for_worker(run)) for run, name in zip(runs, names, strict=True)]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        check_deployment(client, deployment)
        while not all(child.finished() for child in children):
            _start_next(deployment, children, parallel)
            _poll(client, children, progress)
            if deadline is not None and time.monotonic() > deadline:
                _cancel_unfinished(client, children, timeout_s)
                break
            if not all(child.finished() for child in children):
                time.sleep(POLL_S)
    return [summary(child) for child in children]


def check_deployment(client: SyncPrefectClient, deployment: str) -> None:
    """The deployment exists on this server (else one line saying how to deploy it); warn if no worker polls."""
    try:
        found = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise EcoflapError(
            f"no deployment {deployment!r} on the Prefect server {PREFECT_API_URL.value() or '(temporary)'}: "
            "set PREFECT_API_URL to the server it is deployed on, or deploy it "
            "(prefect deploy --all --prefect-file deployments/prefect.yaml)"
        ) from None
    except ValueError:
        raise EcoflapError(f"--deployment {deployment!r}: give FLOW/DEPLOYMENT, e.g. prune-and-evaluate/run") from None
    pool = found.work_pool_name
    if pool and not [w for w in client.read_workers_for_work_pool(pool) if w.status == "ONLINE"]:
        get_run_logger().warning(
            f"no worker polls the work pool {pool!r} now: the runs wait for one (prefect worker start --pool {pool})"
        )


def _start_next(deployment: str, children: list[Child], parallel: int) -> None:
    """Start children until ``parallel`` are started and unfinished."""
    running = sum(1 for child in children if child.flow_run is not None and not child.finished())
    parent = FlowRunContext.get()
    for child in [c for c in children if c.flow_run is None][: max(parallel - running, 0)]:
        child.flow_run = run_deployment(
            deployment,
            parameters={"config": child.config.model_dump(mode="json")},
            flow_run_name=child.name,
            timeout=0,
            # a retry of this sweep's flow run finds the runs it started instead of starting them again
            idempotency_key=f"{parent.flow_run.id}:{child.name}" if parent and parent.flow_run else None,
            job_variables=_job_variables(),
        )
        get_run_logger().info(f"{child.name}: started as flow run {child.flow_run.name} ({child.flow_run.id})")


def _poll(client: SyncPrefectClient, children: list[Child], progress: Progress) -> None:
    waiting = {child.flow_run.id: child for child in children if child.flow_run is not None and not child.finished()}
    if not waiting:
        return
    for flow_run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(waiting)))):
        child = waiting[flow_run.id]
        child.flow_run = flow_run
        if child.finished():
            get_run_logger().info(f"{child.name}: {flow_run.state.name}")
            progress.update(sum(1 for c in children if c.finished()))


def _cancel_unfinished(client: SyncPrefectClient, children: list[Child], timeout_s: float | None) -> None:
    """Past the timeout: cancel what runs, so no child outlives the sweep unawaited."""
    for child in children:
        if child.flow_run is not None and not child.finished():
            client.set_flow_run_state(child.flow_run.id, Cancelling(message=f"the sweep waited {timeout_s:g} s"))
    get_run_logger().warning(f"sweep: runs unfinished after {timeout_s:g} s were cancelled")


def summary(child: Child) -> Step:
    """The child's summary (its flow's persisted result), or ``{"run_name", "failed"}`` naming its state."""
    state = child.flow_run.state if child.flow_run is not None else None
    if state is None:
        return {"run_name": child.name, "failed": "never started: the sweep's wait ended first"}
    if not state.is_final():
        return {"run_name": child.name, "failed": f"still {state.name} when the sweep's wait ended: cancelled"}
    if not state.is_completed():
        return {"run_name": child.name, "failed": f"{state.name}: {state.message or 'no message'}"}
    try:
        return state.result()
    except Exception as exc:  # noqa: BLE001 - completed, but its result is out of reach: say where to look
        return {
            "run_name": child.name,
            "failed": f"completed, but its result cannot be read here ({type(exc).__name__}: {exc}); "
            f"its results are in {child.config.output}; share $ECOFLAP_RUN_CACHE between the workers and this host",
        }


def for_worker(run: RunConfig) -> RunConfig:
    """The run as a worker elsewhere must see it: input paths relative to here made absolute, the caller's
    results database (``--database-url``, else this process's ``$ECOFLAP_DATABASE_URL``; a SQLite path absolute)."""
    update: dict[str, Any] = {}
    if run.model not in steps.default_registries().models:
        update["model"] = _absolute_if_present(run.model)
    if run.corpus not in CORPUS_NAMES:
        update["corpus"] = _absolute_if_present(run.corpus)
    if run.allocation_file:
        update["allocation_file"] = _absolute_if_present(run.allocation_file)
    url = run.database_url or os.environ.get(ENV_URL)
    update["database_url"] = absolute_sqlite(url) if url else None
    return run.model_copy(update=update)


def _absolute_if_present(value: str) -> str:
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def absolute_sqlite(url: str) -> str:
    """A SQLite URL with a relative file path -> the same file by its absolute path; other URLs unchanged."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an invalid URL stays as given: the store says what is wrong with it
        return url
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    absolute = str(Path(parsed.database).expanduser().resolve())
    return url if absolute == parsed.database else parsed.set(database=absolute).render_as_string(hide_password=False)


def _job_variables() -> dict[str, Any] | None:
    """The caller's run cache (when it names one) for the worker's process: steps and results shared."""
    cache = os.environ.get(steps.RUN_CACHE_ENV)
    if not cache:
        return None
    folder = Path(cache).expanduser().resolve()
    return {"env": {steps.RUN_CACHE_ENV: str(folder), "PREFECT_LOCAL_STORAGE_PATH": str(folder / "prefect")}}
