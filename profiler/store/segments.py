"""Segment files of the run store: names, the stream-prefix reader and table helpers shared by
the writer, the reader and compaction (see :mod:`profiler.store`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ..schema import SPAN_SCHEMA

if TYPE_CHECKING:  # pandas is imported only when a reader converts to a DataFrame
    import pandas as pd

__all__ = ["SEALED", "OPEN", "SEG_RE", "PART_RE", "IPC_OPTIONS", "rank_dir_name", "safe_name",
           "next_seq", "concat", "window", "to_pandas", "part_first"]

SEALED = ".arrows"
OPEN = ".arrows.open"
SEG_RE = re.compile(r"^seg-(\d{6,})\.arrows(\.open)?$")
PART_RE = re.compile(r"^part-(\d{6,})-(\d{6,})\.parquet$")
IPC_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def rank_dir_name(rank: int) -> str:
    return f"rank-{rank:05d}"


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if cleaned in ("", ".", ".."):
        raise ValueError(f"stream name {name!r} is empty after cleaning")
    return cleaned


def next_seq(directory: Path) -> int:
    seqs = [-1]
    for entry in os.listdir(directory):
        m = SEG_RE.match(entry)
        if m:
            seqs.append(int(m.group(1)))
        p = PART_RE.match(entry)
        if p:
            seqs.append(int(p.group(2)))
    return max(seqs) + 1


def concat(tables: Sequence[pa.Table | None], schema: pa.Schema | None) -> pa.Table:
    present = [t for t in tables if t is not None and t.num_rows]
    if not present:
        if schema is None:
            non_null = [t for t in tables if t is not None]
            return non_null[0] if non_null else SPAN_SCHEMA.empty_table()
        return schema.empty_table()
    if len(present) == 1:
        return present[0]
    return pa.concat_tables(present, promote_options="default")


def window(table: pa.Table, start_col: str, end_col: str, start_ns: int | None,
            end_ns: int | None, columns: Sequence[str] | None) -> pa.Table:
    mask = None
    if start_ns is not None:
        mask = pc.greater_equal(table.column(end_col), pa.scalar(int(start_ns), pa.int64()))
    if end_ns is not None:
        m2 = pc.less(table.column(start_col), pa.scalar(int(end_ns), pa.int64()))
        mask = m2 if mask is None else pc.and_(mask, m2)
    if mask is not None:
        table = table.filter(mask)
    if columns is not None:
        table = table.select(list(columns))
    return table


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Integer columns that may hold nulls become pandas' nullable Int32/Int64 (never
    float with NaN); non-nullable ones stay numpy integers; strings stay strings."""
    import pandas as pd

    int_map = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    df = table.to_pandas(types_mapper=int_map.get)
    for field in table.schema:
        if not field.nullable and pa.types.is_integer(field.type) and field.name in df:
            df[field.name] = df[field.name].to_numpy(dtype=field.type.to_pandas_dtype())
    return df


def parquet() -> ModuleType:
    """``pyarrow.parquet``, imported on first use: only compacted parts are Parquet, so an
    import or a live tail that never meets one does not load it (nor ``pyarrow.fs``)."""
    import pyarrow.parquet as pq

    return pq


def part_first(path: Path) -> int:
    m = PART_RE.match(path.name)
    assert m is not None
    return int(m.group(1))
