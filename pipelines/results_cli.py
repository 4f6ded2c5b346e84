"""``ecoflap results ...`` and ``ecoflap regress``: the results database from the command line."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ecoflap.core.errors import EcoflapError

RESULTS_EXAMPLES = """
\b
Examples:
  ecoflap results record out/results.json --tag baseline
  ecoflap results record lm_eval_out/results_2025-01-01T00-00-00.json   # a plain lm-eval results file
  ecoflap results leaderboard --task vqa --sparsity 0.5
  ecoflap results show baseline
  ecoflap results compare baseline 7
  ecoflap results export --format csv -o results.csv
  ecoflap results list --database-url postgresql://user@host/ecoflap   # or $ECOFLAP_DATABASE_URL
"""

REGRESS_EXAMPLES = """
\b
Examples:
  ecoflap regress --baseline baseline --candidate out/results.json --tolerance vqa:acc=0.01
  ecoflap regress --baseline 3 --tolerance '*:*=0.02'      # every metric, candidate = latest run
  ecoflap regress --baseline base.json --candidate lm_eval_results.json --tolerance 'wikitext:*=2%'
  ecoflap regress --candidate 7 --floors floors.yaml        # floors.yaml: {vqa: {acc: 0.85}}
"""

LEADERBOARD_TABLE = [
    "model", "task", "metric", "sparsity", "rank", "method",
    "value", "stderr", "dense_value", "delta", "runs", "run_id",
]  # fmt: skip
BLOCK_COLUMNS = ["block", "tower", "layers", "target", "measured", "params"]
COMPARE_COLUMNS = ["task", "metric", "filter", "value_a", "stderr_a", "value_b", "stderr_b", "delta", "better"]
METRIC_COLUMNS = ["task", "metric", "filter", "value", "stderr", "n_samples", "higher_is_better", "task_version"]
LIST_COLUMNS = ["id", "key", "model", "method", "sparsity", "measured", "status", "tags", "updated_at"]
METHOD_CSV_COLUMNS = ["method_label", "method_key", "nm", "max_sparsity", "granularity", "aggregation", "per_tower",
                      "method"]  # fmt: skip
EXPORT_CSV_COLUMNS = [
    "run_id", "run_key", "model", "model_hash", "checkpoint", "dense", "pruner", "scorer", "allocator",
    *METHOD_CSV_COLUMNS,
    "target_sparsity", "measured_sparsity", "status", "code_version", "git_hash", "tags", "created_at", "updated_at",
    *METRIC_COLUMNS,
]  # fmt: skip


DATABASE_HELP = "results database URL (alias --db) [$ECOFLAP_DATABASE_URL, else results.db in the user data folder]"


def database_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--database-url URL`` (alias ``--db``), default ``$ECOFLAP_DATABASE_URL``: one spelling on every command."""
    option = click.option("--database-url", "--db", "db_url", metavar="URL", envvar="ECOFLAP_DATABASE_URL",
                          help=DATABASE_HELP)  # fmt: skip
    return option(command)


def _format_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True, help="output format"
    )


def _store(db_url: str | None) -> Any:
    from ecoflap.evaluation.results.store import ResultsStore

    return ResultsStore(db_url)


def _emit(rows: list[dict[str, Any]], fmt: str, table_columns: list[str], csv_columns: list[str] | None = None) -> None:
    from ecoflap.evaluation.results.tables import csv_text, json_text, table

    if fmt == "json":
        click.echo(json_text(rows))
    elif fmt == "csv":
        click.echo(csv_text(rows, csv_columns or table_columns), nl=False)
    elif rows:
        click.echo(table(rows, table_columns))


def _sparsity(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
        raise EcoflapError(f"--sparsity {value} is not a sparsity between 0 and 1")
    return value


def _label(run: dict[str, Any]) -> str:
    tags = f", tag {', '.join(run['tags'])}" if run.get("tags") else ""
    return f"run {run['id']} ({run['run_key'][:12]}{tags})"


@click.group("results", epilog=RESULTS_EXAMPLES)
def results() -> None:
    """Record, rank, compare and export evaluation results (SQLite by default, or PostgreSQL)."""


@results.command("record")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--tag", help="tag the recorded run (one file only)")
@database_option
def record_command(files: tuple[Path, ...], tag: str | None, db_url: str | None) -> None:
    """Record results documents (results.json, or plain lm-eval results files); the same run key updates its run.

    Every file is checked before any is recorded. A file without an "ecoflap" block (what lm-eval writes)
    is recorded as a dense run of unknown method: its model from lm-eval's model_name or model_args, its run
    key from its content.
    """
    from ecoflap.evaluation.results.comparison import read_document
    from ecoflap.evaluation.results.document import validate
    from ecoflap.evaluation.results.store import check_tag

    if tag is not None and len(files) > 1:
        raise EcoflapError("--tag needs exactly one results file")
    if tag is not None:
        check_tag(tag)
    documents = [(path, read_document(path)) for path in files]
    for path, document in documents:
        try:
            validate(document)
        except EcoflapError as exc:
            raise EcoflapError(f"{path}: {exc} (nothing recorded)") from None
    store = _store(db_url)
    for path, document in documents:
        run_id = store.record(document, artefacts={"results": str(path.resolve())})
        if tag is not None:
            store.tag(run_id, tag)
        plain = "" if "ecoflap" in document else " (plain lm-eval results: method unknown, recorded as dense)"
        click.echo(f"recorded {_label(store.require_run(run_id))} from {path}{plain}")


@results.command("list")
@_format_option("table", "json", "csv")
@database_option
def list_command(fmt: str, db_url: str | None) -> None:
    """Every recorded run, oldest first."""
    rows = [
        {
            "id": run["id"], "key": run["run_key"][:12], "run_key": run["run_key"], "model": run["model"],
            "method": run["method_label"], "method_key": run["method_key"], "sparsity": run["target_sparsity"],
            "measured": run["measured_sparsity"],
            "status": run["status"], "tags": ",".join(run["tags"]), "updated_at": run["updated_at"],
        }
        for run in _store(db_url).runs()
    ]  # fmt: skip
    _emit(rows, fmt, LIST_COLUMNS)
    if not rows and fmt == "table":
        click.echo("no runs recorded yet", err=True)


@results.command("leaderboard")
@click.option("--model", help="only this model")
@click.option("--task", help="only this task")
@click.option("--metric", help="only this metric (e.g. acc)")
@click.option("--sparsity", type=float, callback=lambda _c, _p, v: _sparsity(v),
              help="only this target sparsity (0 = dense baselines)")  # fmt: skip
@_format_option("table", "json", "csv")
@database_option
def leaderboard_command(
    model: str | None, task: str | None, metric: str | None, sparsity: float | None, fmt: str, db_url: str | None
) -> None:
    """Best run per method (its full settings) for each model, task, metric and sparsity."""
    from ecoflap.evaluation.results.leaderboard import COLUMNS

    rows = _store(db_url).leaderboard(model=model, task=task, sparsity=sparsity, metric=metric)
    _emit(rows, fmt, LEADERBOARD_TABLE, COLUMNS)
    if not rows and fmt == "table":
        click.echo("no complete runs match", err=True)


@results.command("show")
@click.argument("run")
@_format_option("table", "json")
@database_option
def show_command(run: str, fmt: str, db_url: str | None) -> None:
    """One run (id, tag, run key or key prefix): settings, metrics and allocation per block."""
    found = _store(db_url).require_run(run)
    if fmt == "json":
        from ecoflap.evaluation.results.tables import json_text

        click.echo(json_text(found))
        return
    from ecoflap.evaluation.results.tables import table

    click.echo(f"{_label(found)}: {found['model']}, {found['method_label']}")
    click.echo(f"  {'method_key':<18} {found['method_key']}")
    for name, value in (found["method"] or {}).items():
        click.echo(f"  {'method.' + name:<18} {json.dumps(value)}")
    for name in ("run_key", "target_sparsity", "measured_sparsity", "status", "checkpoint", "model_hash", "git_hash"):
        click.echo(f"  {name:<18} {found[name]}")
    for name in ("created_at", "updated_at", "timings", "peak_memory_mb", "seeds", "library_versions"):
        click.echo(f"  {name:<18} {json.dumps(found[name]) if isinstance(found[name], dict) else found[name]}")
    click.echo("\n" + table(found["metrics"], METRIC_COLUMNS))
    if found["allocation"]:
        click.echo("\n" + table(_blocks(found["allocation"]), BLOCK_COLUMNS))


def _blocks(allocation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per block: parameter-weighted mean target and measured sparsity."""
    blocks: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in allocation:
        blocks[(row["block"] or row["layer"], row["tower"])].append(row)
    return [{"block": b, "tower": t, "layers": len(rows), **_weighted(rows)} for (b, t), rows in blocks.items()]


def _weighted(rows: list[dict[str, Any]]) -> dict[str, Any]:
    weights = [row["params"] or 1 for row in rows]
    out: dict[str, Any] = {"params": sum(row["params"] or 0 for row in rows)}
    for key in ("target", "measured"):
        pairs = [(row[key], w) for row, w in zip(rows, weights, strict=True) if row[key] is not None]
        out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None
    return out


@results.command("compare")
@click.argument("first")
@click.argument("second")
@_format_option("table", "json", "csv")
@database_option
def compare_command(first: str, second: str, fmt: str, db_url: str | None) -> None:
    """Two runs metric by metric: a = FIRST, b = SECOND, delta = b - a, better = the better run."""
    from ecoflap.evaluation.results.comparison import compare_runs

    store = _store(db_url)
    a, b = store.require_run(first), store.require_run(second)
    if fmt == "table":
        from ecoflap.evaluation.results.tables import table

        click.echo(f"a: {_label(a)}, {a['method_label']}\nb: {_label(b)}, {b['method_label']}")
        click.echo(table(_method_rows(a, b), ["setting", "a", "b", "same"]) + "\n")
    _emit(compare_runs(a["metrics"], b["metrics"]), fmt, COMPARE_COLUMNS)


def _method_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Both runs' method settings side by side (every key of either, the key first)."""
    first, second = a["method"] or {}, b["method"] or {}
    rows = [{"setting": "method_key", "a": a["method_key"], "b": b["method_key"]}]
    rows += [
        {"setting": name, "a": first.get(name), "b": second.get(name)} for name in dict.fromkeys([*first, *second])
    ]
    return [row | {"same": row["a"] == row["b"]} for row in rows]


@results.command("export")
@_format_option("json", "csv")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="file to write [stdout]")
@database_option
def export_command(fmt: str, output: Path | None, db_url: str | None) -> None:
    """All runs with their metrics (JSON: everything, with allocations; CSV: one row per metric)."""
    from ecoflap.evaluation.results.tables import csv_text, json_text

    runs = _store(db_url).runs()
    if fmt == "json":
        text = json_text(runs) + "\n"
    else:
        rows = [
            {**run, "run_id": run["id"], "tags": ",".join(run["tags"]), **metric}
            for run in runs
            for metric in run["metrics"]
        ]
        text = csv_text(rows, EXPORT_CSV_COLUMNS)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise EcoflapError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {len(runs)} runs to {output}", err=True)


@results.command("tag")
@click.argument("run")
@click.argument("tag")
@database_option
def tag_command(run: str, tag: str, db_url: str | None) -> None:
    """Name a run (the tag moves if another run had it)."""
    store = _store(db_url)
    run_id = store.tag(run, tag)
    click.echo(f"tagged {_label(store.require_run(run_id))}")


TOLERANCE_HELP = (
    "allowed drop below the baseline (rise, for lower-is-better metrics): absolute (vqa:acc=0.01) or a percentage "
    "of the baseline's value (wikitext:word_perplexity=2%); * patterns; repeatable"
)


@click.command("regress", epilog=REGRESS_EXAMPLES)
@click.option("--baseline", help="run id, tag or run key (or a results.json file) to compare against")
@click.option("--candidate", help="run id, tag, run key or results.json file [the latest recorded run]")
@click.option("--tolerance", "tolerances", multiple=True, metavar="TASK:METRIC=DROP|PCT%", help=TOLERANCE_HELP)
@click.option("--floors", type=click.Path(path_type=Path, dir_okay=False), help="YAML {task: {metric: floor}}")
@database_option
def regress(
    baseline: str | None, candidate: str | None, tolerances: tuple[str, ...], floors: Path | None, db_url: str | None
) -> None:
    """Exit 1 if the candidate's metrics fell below the baseline's (beyond the tolerances) or below floors.

    Baseline and candidate are recorded runs or results files: ecoflap's results.json or a plain lm-eval
    results file (no ecoflap block needed).
    """
    from ecoflap.evaluation.results.comparison import (
        CHECK_COLUMNS,
        check_against_baseline,
        check_floors,
        check_rows,
        failure_message,
        load_floors,
        parse_tolerances,
    )
    from ecoflap.evaluation.results.tables import table

    if not tolerances and floors is None:
        raise EcoflapError("give --tolerance TASK:METRIC=DROP (with --baseline) and/or --floors FILE")
    if tolerances and baseline is None:
        raise EcoflapError("--tolerance needs --baseline RUN|TAG")
    allowed, limits = parse_tolerances(tolerances), load_floors(floors) if floors else {}
    sources = _Sources(db_url)
    after_label, after = sources.metrics(candidate)
    checks = []
    if tolerances:
        before_label, before = sources.metrics(baseline)
        click.echo(f"baseline: {before_label}")
        checks += check_against_baseline(after, before, allowed)
    click.echo(f"candidate: {after_label}")
    checks += check_floors(after, limits)
    click.echo(table(check_rows(checks), CHECK_COLUMNS))
    if any(check.failed for check in checks):
        raise EcoflapError(failure_message(checks))
    click.echo(f"no regression ({len(checks)} metrics checked)")


class _Sources:
    """Metric rows of runs in the database or of results files; the database opens only when needed."""

    def __init__(self, db_url: str | None) -> None:
        self.db_url, self._store = db_url, None

    @property
    def store(self) -> Any:
        self._store = self._store or _store(self.db_url)
        return self._store

    def metrics(self, ref: str | None) -> tuple[str, list[dict[str, Any]]]:
        from ecoflap.evaluation.results.comparison import metrics_of

        if ref is not None and Path(ref).is_file():
            return f"file {ref}", metrics_of(Path(ref))
        run = self.store.require_run(ref) if ref is not None else self.store.latest_run()
        if run is None:
            raise EcoflapError("no runs recorded yet: give --candidate RUN or a results.json file")
        return _label(run), run["metrics"]


def register(cli: click.Group) -> None:
    cli.add_command(results)
    cli.add_command(regress)
