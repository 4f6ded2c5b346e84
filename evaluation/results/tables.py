"""Aligned terminal tables and CSV text for query results.

Every CSV the CLI and the dashboard write goes through ``csv_text``, whose cells pass ``spreadsheet_safe``:
a text cell a spreadsheet would evaluate as a formula is written with a leading ``'`` (OWASP's rule).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|-")  # a number written as text, or a lone "-"


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".4f") -> str:
    """``columns`` of ``rows`` as an aligned plain-text table."""
    body = [[_cell(row.get(column)) for column in columns] for row in rows]
    return tabulate(body, headers=list(columns), tablefmt="simple", floatfmt=floatfmt, missingval="-")


def finite(value: Any) -> Any:
    """JSON-safe: infinities and NaN -> None, recursively (``json.dumps`` would write the invalid ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """Strict JSON (no ``Infinity`` or ``NaN``), indented."""
    return json.dumps(finite(value), indent=2, allow_nan=False)


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that opens as text: ``'`` before a string starting with = + - @ tab or CR (numbers stay numbers)."""
    if isinstance(value, dict | list):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``columns`` of ``rows`` as CSV, every cell through ``spreadsheet_safe``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writerow({column: spreadsheet_safe(column) for column in columns})
    for row in rows:
        writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
    return out.getvalue()
