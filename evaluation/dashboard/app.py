"""The results dashboard: a read-only Starlette app over the results database (SQLite or PostgreSQL).

Pages (each with a JSON twin ``<page>.json`` and a CSV export ``<page>.csv``): the leaderboard (``/``),
curves of a metric against sparsity (``/curves``), the allocator arena (``/arena``), the runs (``/runs``), one
run (``/runs/<ref>``) and two runs side by side (``/compare?a=..&b=..``). HTML comes from Jinja2 templates with
autoescaping; charts are server-side SVG; styles are served from ``static/``; nothing loads from another host.
Only GET (and HEAD) routes exist, and the database is opened read-only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ecoflap.core.errors import EcoflapError
from ecoflap.evaluation.dashboard import charts, views
from ecoflap.evaluation.results.arena import COLUMNS as ARENA_COLUMNS
from ecoflap.evaluation.results.leaderboard import COLUMNS as LEADERBOARD_COLUMNS
from ecoflap.evaluation.results.store import StoreUnavailable, masked, resolve_url
from ecoflap.evaluation.results.tables import finite

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LEADERBOARD_HEADINGS = [
    ("model", "model"), ("task", "task"), ("metric", "metric"), ("sparsity", "sparsity"), ("rank", "rank"),
    ("method", "method"), ("value", "value"), ("stderr", "± stderr"), ("dense_value", "dense"),
    ("delta", "delta vs dense"), ("runs", "runs"), ("run_id", "run"),
]  # fmt: skip


class NotFound(EcoflapError):
    """No run with this reference (a 404 page)."""


@dataclass
class Page:
    """One page: its template and context (HTML), its data (JSON twin) and its table (CSV export)."""

    name: str
    title: str
    context: dict[str, Any]
    data: Any
    rows: list[dict[str, Any]]
    columns: list[str]
    template: str = ""
    twins: list[tuple[str, str]] = field(default_factory=list)


class StoreHolder:
    """Opens the store on first use and again after a failed open (so the dashboard recovers when the DB does)."""

    def __init__(self, url: str | None, factory: Callable[[str | None], Any]) -> None:
        self.url, self.factory, self._store = url, factory, None

    @property
    def label(self) -> str:
        try:
            return masked(resolve_url(self.url))
        except EcoflapError:
            return str(self.url)

    def get(self) -> Any:
        if self._store is None:
            self._store = self.factory(self.url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# ---- pages --------------------------------------------------------------------------------------


def leaderboard_page(request: Request, store: Any) -> Page:
    board = views.leaderboard(store, request.query_params)
    links = {column: _sort_link(request, column, board) for column in LEADERBOARD_COLUMNS}
    context = {"board": board, "columns": LEADERBOARD_HEADINGS, "sort_links": links}
    return Page("leaderboard", "Leaderboard", context, board.as_json(), board.rows, LEADERBOARD_COLUMNS)


def _sort_link(request: Request, column: str, board: views.Leaderboard) -> str:
    order = "desc" if board.sort == column and board.order == "asc" else "asc"
    params = {k: v for k, v in request.query_params.items() if k not in ("sort", "order") and v}
    return f"{request.url.path}?{urlencode(params | {'sort': column, 'order': order})}"


def curves_page(request: Request, store: Any) -> Page:
    curve = views.curves(store, request.query_params)
    scale = request.query_params.get("scale") or "auto"
    if scale not in ("auto", "linear", "log"):
        raise views.BadRequest(f"scale must be auto, linear or log, not {scale!r}")
    series = {m: [(p["sparsity"], p["value"], p["run_id"]) for p in pts] for m, pts in curve.series.items()}
    dense = curve.dense["value"] if curve.dense else None
    chart = charts.line_chart(series, "target sparsity", curve.metric or "", dense, scale) if series else None
    title = f"Curves: {curve.metric} of {curve.model} on {curve.task}" if curve.metric else "Curves"
    context = {"curve": curve, "chart": chart, "scale": scale}
    return Page("curves", title, context, curve.as_json(), curve.rows(), views.CURVE_COLUMNS)


def runs_page(request: Request, store: Any) -> Page:
    rows = views.run_rows(store)
    return Page("runs", "Runs", {"rows": rows}, rows, rows, views.RUN_COLUMNS)


def _run(store: Any, ref: str) -> dict[str, Any]:
    run = store.get_run(ref)
    if run is None:
        raise NotFound(f"no run {ref!r} in the results database (give a run id, tag or run key)")
    return run


def run_page(request: Request, store: Any) -> Page:
    run = views.run_view(_run(store, request.path_params["ref"]))
    chart = charts.allocation_chart(run["allocation"], run["target_sparsity"])
    title = f"Run {run['id']}: {run['model']}, {run['method_label']}, sparsity {run['target_sparsity']:g}"
    return Page("run", title, {"run": run, "chart": chart}, run, run["metrics"], views.METRIC_COLUMNS)


def run_allocation_page(request: Request, store: Any) -> Page:
    run = _run(store, request.path_params["ref"])
    return Page("run_allocation", f"Run {run['id']}: allocation", {}, run["allocation"], run["allocation"],
                views.ALLOCATION_COLUMNS)  # fmt: skip


def compare_page(request: Request, store: Any) -> Page:
    a, b = (request.query_params.get(k, "").strip() for k in ("a", "b"))
    twin = request.url.path.endswith((".json", ".csv"))
    choices = [] if twin else views.run_rows(store)
    if not (a and b):
        if twin:
            raise views.BadRequest("give two runs to compare: ?a=RUN&b=RUN (ids, tags or run keys)")
        return Page("compare", "Compare two runs", {"view": None, "choices": choices, "chart": None}, None, [], [])
    view = views.comparison(_run(store, a), _run(store, b))
    title = f"Compare run {view['a']['id']} and run {view['b']['id']}"
    context = {"view": view, "choices": choices, "chart": _blocks_chart(view)}
    return Page("compare", title, context, view, view["metrics"], views.COMPARE_COLUMNS)


def _blocks_chart(view: dict[str, Any]) -> charts.LineChart | None:
    series = {
        f"{side}: run {view[side]['id']} ({view[side]['method']})": [row[f"target_{side}"] for row in view["blocks"]]
        for side in ("a", "b")
    }
    return charts.block_lines(series)


def arena_page(request: Request, store: Any) -> Page:
    view = views.arena(store, request.query_params)
    figures = [_arena_chart(section["rows"]) for section in view.sections]
    title = f"Arena: {view.metric} of {view.model} on {view.task}" if view.metric else "Arena"
    context = {"view": view, "charts": figures}
    return Page("arena", title, context, view.as_json(), view.rows(), ARENA_COLUMNS)


def _arena_chart(rows: list[dict[str, Any]]) -> charts.LineChart | None:
    """Each cell's allocated sparsity per block, side by side (blocks in the order the first cell lists them)."""
    blocks = list(dict.fromkeys(b["block"] for row in rows for b in row["blocks"]))
    series, ids = {}, {}
    for row in rows:
        name = f"{row['rank']}. {row['allocator']} + {row['pruner']}"
        targets = {b["block"]: b["target"] for b in row["blocks"]}
        series[name], ids[name] = [targets.get(block) for block in blocks], row["run_id"]
    return charts.block_lines(series, ids)


# ---- responses ----------------------------------------------------------------------------------


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters |= {"fmt": _fmt, "verdict": _verdict, "compact": _compact}
    return Jinja2Templates(env=env)


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _verdict(delta: float, higher_is_better: bool | None) -> str:
    if not delta:
        return ""
    return "better" if (delta > 0) == (higher_is_better is not False) else "worse"


def _compact(value: Any) -> str:
    if value is None:
        return "-"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(finite(data), indent=2, default=str), status, media_type="application/json")


def csv_response(page: Page) -> Response:
    from ecoflap.evaluation.results.tables import csv_text

    headers = {"Content-Disposition": f'inline; filename="{page.name}.csv"'}
    return Response(csv_text(page.rows, page.columns), media_type="text/csv; charset=utf-8", headers=headers)


def _twins(request: Request, page: Page) -> list[tuple[str, str]]:
    query = f"?{request.url.query}" if request.url.query else ""
    base = request.url.path.rstrip("/") or "/leaderboard"
    twins = [("JSON", f"{base}.json{query}"), ("CSV", f"{base}.csv{query}")]
    return twins if page.data is not None else []


class Dashboard:
    """The routes' handlers around one store holder and one template environment."""

    def __init__(self, holder: StoreHolder) -> None:
        self.holder, self.templates = holder, _templates()

    def endpoint(self, build: Callable[[Request, Any], Page], fmt: str) -> Callable[[Request], Response]:
        def handle(request: Request) -> Response:
            page = build(request, self.holder.get())
            if fmt == "json":
                return json_response(page.data)
            if fmt == "csv":
                return csv_response(page)
            context = {"title": page.title, "page": page.name, "twins": _twins(request, page), **page.context}
            return self.html(request, page.name, context)

        return handle

    def html(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        context = {"database": self.holder.label, "twins": [], **context}
        return self.templates.TemplateResponse(request, f"{name}.html", context, status_code=status)

    def error(self, request: Request, status: int, message: str, hint: str = "") -> Response:
        path = request.url.path
        if path.endswith(".json"):
            return json_response({"error": message, "status": status}, status)
        if path.endswith(".csv"):
            return Response(f"error: {message}\n", status, media_type="text/plain; charset=utf-8")
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 503: "Database unavailable"}
        context = {"title": titles.get(status, "Error"), "page": "error", "message": message, "hint": hint}
        return self.html(request, "error", context, status)


def _routes(dashboard: Dashboard) -> list[Any]:
    pages = [
        ("/", leaderboard_page, "leaderboard", ("html",)),
        ("/leaderboard", leaderboard_page, "leaderboard_page", ("html", "json", "csv")),
        ("/curves", curves_page, "curves", ("html", "json", "csv")),
        ("/arena", arena_page, "arena", ("html", "json", "csv")),
        ("/runs", runs_page, "runs", ("html", "json", "csv")),
        ("/compare", compare_page, "compare", ("html", "json", "csv")),
        ("/runs/{ref}/allocation", run_allocation_page, "run_allocation", ("json", "csv")),
        ("/runs/{ref}", run_page, "run", ("json", "csv", "html")),  # the twins first: {ref} would take "3.json"
    ]
    routes = []
    for path, build, name, formats in pages:
        for fmt in formats:
            suffix = "" if fmt == "html" else f".{fmt}"
            route_name = name if fmt == "html" else f"{name}_{fmt}"
            routes.append(Route(path + suffix, dashboard.endpoint(build, fmt), methods=["GET"], name=route_name))
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    return routes


def _handlers(dashboard: Dashboard) -> dict[Any, Callable[..., Response]]:
    def unavailable(request: Request, exc: Exception) -> Response:
        dashboard.holder.close()
        hint = (
            "Check --database-url / $ECOFLAP_DATABASE_URL and that the database server is running; nothing was changed."
        )
        return dashboard.error(request, 503, str(exc), hint)

    def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "read-only dashboard: only GET requests" if exc.status_code == 405 else str(exc.detail)
        if exc.status_code == 404:
            message = f"no page {request.url.path}"
        response = dashboard.error(request, exc.status_code, message)
        if exc.status_code == 405:
            response.headers["Allow"] = "GET, HEAD"
        return response

    def crashed(request: Request, exc: Exception) -> Response:
        return dashboard.error(request, 500, f"the dashboard failed on this page ({type(exc).__name__})")

    return {
        StoreUnavailable: unavailable,
        NotFound: lambda request, exc: dashboard.error(request, 404, str(exc)),
        EcoflapError: lambda request, exc: dashboard.error(request, 400, str(exc)),
        HTTPException: http,
        Exception: crashed,
    }


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


def _lifespan(holder: StoreHolder) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        holder.close()

    return lifespan


def create_app(url: str | None = None, store_factory: Callable[[str | None], Any] | None = None) -> Starlette:
    """The dashboard over the results database at ``url`` (None: $ECOFLAP_DATABASE_URL, else the default SQLite)."""
    if store_factory is None:
        from ecoflap.evaluation.dashboard.store import ReadOnlyStore as store_factory
    dashboard = Dashboard(StoreHolder(url, store_factory))
    app = Starlette(
        routes=_routes(dashboard),
        exception_handlers=_handlers(dashboard),
        middleware=[Middleware(_SecurityHeaders)],
        lifespan=_lifespan(dashboard.holder),
    )
    app.state.dashboard = dashboard
    return app
