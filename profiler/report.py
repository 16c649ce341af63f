"""Output for reporting commands: ``--json`` for machines, rich tables for people."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = ["dump_json", "print_json", "print_table", "jsonable"]


def jsonable(obj: Any) -> Any:
    """Make pandas / numpy values JSON-friendly: NaN and NA become null."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if obj is pd.NA or obj is None:
        return None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def dump_json(obj: Any) -> bytes:
    return orjson.dumps(jsonable(obj), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def print_json(obj: Any) -> None:
    sys.stdout.buffer.write(dump_json(obj) + b"\n")
    sys.stdout.flush()


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Print rows as a table (rich), formatting floats compactly."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    Console(soft_wrap=False, width=200).print(table)


def _fmt(v: Any) -> str:
    v = jsonable(v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.4e}"
    return str(v)
