"""Aligned terminal tables and CSV text for query results."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate


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


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    return out.getvalue()
