"""The derived stream of per-step results: ``RUN/derived/steps/<table>/`` (docs/trace-format.md,
"Step results").

Each table is a stream of segments in the run store's format (Arrow IPC, checksums, rotation,
cursors). One engine writes them (:class:`DerivedWriter`, holding ``derived/steps/.lock``);
any number of readers follow them (:class:`StepResults`), each reading only rows it has not
read. Every row carries ``batch``, the id of the engine update that wrote it; an update writes
its tables, then one row to ``commits``. Readers keep only rows of committed batches, so an
engine killed in the middle of an update leaves nothing half-visible, and its successor
recomputes that update under a new batch id. ``state.json`` holds the engine's checkpoint
(where to resume reading, the layout it fixed, what it has finished).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..manifest import write_json_atomic
from ..store import RunReader, StreamWriter
from ..store.cursor import Cursor
from ..store.segments import to_pandas

__all__ = ["DERIVED", "TABLES", "DerivedWriter", "StepResults", "to_arrow", "read_state",
           "EngineLocked"]

DERIVED = "derived/steps"
#: every table of the derived stream, with the columns that identify a row
TABLES: dict[str, tuple[str, ...]] = {
    "steps": ("pipeline", "step"),
    "bubbles": ("rank", "step"),
    "overlap": ("rank", "step"),
    "sm": ("rank", "step"),
    "ops": ("rank", "step", "kind", "op"),
    "ideal": ("rank", "step"),
    "costs": ("pipeline", "step", "stage"),
    "work": ("pipeline", "step", "stage", "op"),
    "ideal_spans": ("rank", "step", "start_ns"),
    "bandwidth": ("node", "step", "gpu", "device", "metric", "phase"),
    "scores": ("step", "rank", "kind", "op"),
}
_COMMITS = "commits"


class EngineLocked(RuntimeError):
    """Another process is the engine of this run (it holds ``derived/steps/.lock``)."""


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """A result frame as an Arrow table with plain types: strings (and categoricals) as
    ``string``, integers (nullable ones too) as ``int64``, floats as ``float64``; an all-null
    object column as ``string``. (No dictionary columns: a stream of them would need
    dictionary batches.)"""
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_large_string(t) or pa.types.is_null(t) or pa.types.is_string(t):
            t = pa.string()
        elif pa.types.is_integer(t):
            t = pa.int64()
        elif pa.types.is_floating(t):
            t = pa.float64()
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields))


class DerivedWriter:
    """Appends result tables to ``RUN/derived/steps``; one per run (an advisory lock)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, rotate_s: float = 60.0,
                 fsync: bool = False) -> None:
        self.root = Path(run_dir) / DERIVED
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = open(self.root / ".lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise EngineLocked(f"{self.root}: another process computes this run's step "
                               "results; read them with StepResults") from None
        self.rotate_s, self.fsync = rotate_s, fsync
        self._writers: dict[str, StreamWriter] = {}

    def _writer(self, name: str, table: pa.Table) -> StreamWriter:
        w = self._writers.get(name)
        if w is not None and not w.schema.equals(table.schema):
            w.close()  # the analysis gained a column: a new segment with the new schema
            w = None
        if w is None:
            w = StreamWriter(self.root / name, table.schema, rotate_s=self.rotate_s, flush_s=0,
                             fsync=self.fsync, name=f"{DERIVED}/{name}")
            self._writers[name] = w
        return w

    def append(self, tables: dict[str, pd.DataFrame], batch: int, units: int) -> None:
        """Write one update: every non-empty table (tagged with ``batch``), then its commit."""
        for name, df in tables.items():
            if len(df):
                table = to_arrow(df.assign(batch=np.int64(batch)))
                w = self._writer(name, table)
                w.write(table)
                w.flush()
        commit = pa.table({"batch": [batch], "units": [units], "unix_ns": [time.time_ns()]})
        w = self._writer(_COMMITS, commit)
        w.write(commit)
        w.flush()

    def write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.root / "state.json", state)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(run_dir) / DERIVED / "state.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class StepResults:
    """The committed step results of a run, read incrementally: :meth:`update` reads the rows
    written since the last call (a cursor per table) and returns them; :meth:`table` gives
    every row kept so far, optionally only those of steps that ended by ``upto_ns`` (replay).
    Cost is O(new rows) per update, never O(spans). What is kept: the tables in ``keep``
    (default: all), and with ``window_steps`` only the newest that many steps of each (a live
    view that shows the newest steps holds flat memory; whole-run numbers come from
    :class:`~.summary.RunningKpis` over what :meth:`update` returns)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, reader: RunReader | None = None,
                 keep: Collection[str] | None = None, window_steps: int | None = None):
        self.path = Path(run_dir)
        self.reader = reader or RunReader(self.path)
        self.keep = set(TABLES) if keep is None else set(keep)
        unknown = self.keep - set(TABLES)
        if unknown:
            raise KeyError(f"unknown step-result tables {sorted(unknown)}; use any of "
                           f"{', '.join(TABLES)}")
        if window_steps is not None and window_steps < 1:
            raise ValueError(f"window_steps {window_steps} must be at least 1")
        self.window_steps = window_steps
        self.cursor = Cursor()
        #: per table, the rows read so far: one frame, plus the pieces of the updates since
        #: the table was last read (:meth:`table` joins them into one)
        self._rows: dict[str, list[pd.DataFrame]] = {n: [] for n in TABLES}
        self._pending: dict[str, list[pd.DataFrame]] = {n: [] for n in TABLES}
        self._committed: set[int] = set()

    def update(self) -> dict[str, pd.DataFrame]:
        """Rows committed since the last call, per table (tables with none left out)."""
        names = [f"{DERIVED}/{n}" for n in (*TABLES, _COMMITS)]
        present = [n for n in names if (self.path / n).is_dir()]
        reads, self.cursor = self.reader.read_since(self.cursor, kind=DERIVED, streams=present)
        for r in reads:
            name = r.stream.rsplit("/", 1)[1]
            assert r.table is not None
            if name == _COMMITS:
                self._committed.update(r.table.column("batch").to_pylist())
            else:
                self._pending[name].append(_plain_ints(to_pandas(r.table)))
        new: dict[str, pd.DataFrame] = {}
        for name, frames in self._pending.items():
            if not frames:
                continue
            df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
            ok = df["batch"].isin(list(self._committed)).to_numpy()
            self._pending[name] = [df.loc[~ok]] if (~ok).any() else []
            if ok.any():
                got = df.loc[ok].reset_index(drop=True)
                new[name] = got
                if name in self.keep:
                    self._rows[name].append(got)
        if self.window_steps is not None:
            for name in new:
                if name in self.keep:
                    self._trim(name)
        return new

    def _trim(self, name: str) -> None:
        df = self.table(name)
        if len(df) == 0 or "step" not in df:
            return
        low = int(df["step"].max()) - self.window_steps + 1  # type: ignore[operator]
        if int(df["step"].min()) < low:
            df = df.loc[df["step"].to_numpy() >= low].reset_index(drop=True)
        self._rows[name] = [df]

    def table(self, name: str, upto_ns: int | None = None) -> pd.DataFrame:
        """Every committed row of ``name`` (one of :data:`TABLES`) read so far; with
        ``upto_ns`` only rows whose step ended by then (``step_end_ns <= upto_ns``)."""
        if name not in TABLES:
            raise KeyError(f"unknown step-result table {name!r}; one of {', '.join(TABLES)}")
        frames = self._rows[name]
        if len(frames) > 1:
            # held as that one frame from now on: kept as the updates' pieces, every read of
            # the table (a concat) left a dead weak reference on each piece's index (pandas'
            # copy-on-write tracking clears them only past ~500 a piece), so a live run's
            # collector pauses grew with its steps (docs/performance.md, session 10)
            frames[:] = [pd.concat(frames, ignore_index=True)]
        df = frames[0] if frames else pd.DataFrame()
        if upto_ns is not None and len(df):
            df = df.loc[df["step_end_ns"].to_numpy() <= upto_ns].reset_index(drop=True)
        return df

    def tables(self, upto_ns: int | None = None) -> dict[str, pd.DataFrame]:
        return {n: self.table(n, upto_ns) for n in TABLES}


def _plain_ints(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns that hold no null become plain int64 (as the analyses make
    them); those with nulls stay ``Int64``."""
    for c in df.columns:
        if isinstance(df[c].dtype, pd.Int64Dtype) and not df[c].isna().any():
            df[c] = df[c].to_numpy(dtype=np.int64)
    return df
