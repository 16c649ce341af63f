"""The run schema: the columns every part of dualscope writes and reads.

One table declares each column, its Arrow type, whether it may be null and its unit, so the
store, the importers, the model and the docs (docs/trace-format.md) agree. Times are int64
nanoseconds on one run clock; sizes are bytes; counts of SMs are plain integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "Column",
    "SPAN_COLUMNS",
    "COUNTER_COLUMNS",
    "SPAN_SCHEMA",
    "COUNTER_SCHEMA",
    "LANES",
    "OPS",
    "PRE_TRACE_STEP",
    "empty_spans",
    "empty_counters",
    "spans_table",
    "counters_table",
]

#: Bumped whenever a column is added, removed or changes meaning. Readers refuse runs with a
#: newer major version and fill columns missing from an older run with nulls.
SCHEMA_VERSION = 1

#: Where a span ran. ``compute``: kernels or pipeline actions that do model math;
#: ``comm``: expert-parallel / collective communication (dispatch, combine, all_to_all,
#: all_reduce, ...); ``pp_comm``: pipeline point-to-point send/recv; ``host``: CPU-side
#: annotations and ops; ``memory``: memcpy / memset on the GPU.
LANES = ("compute", "comm", "pp_comm", "host", "memory")

#: Pipeline op of a span: forward, full backward, input-grad backward, weight-grad backward,
#: and an overlapped forward+backward pair (DualPipe's F&B).
OPS = ("F", "B", "I", "W", "FB")

#: ``step`` of a GPU span whose launching host op is not in the trace (it was launched before
#: profiling began): it belongs to no step, is left out of every per-step figure and counted
#: in an import note
PRE_TRACE_STEP = -2


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    unit: str
    doc: str


SPAN_COLUMNS: tuple[Column, ...] = (
    Column("rank", pa.int32(), False, "", "global rank that recorded the span"),
    Column("lane", pa.string(), False, "", "one of LANES"),
    Column("kind", pa.string(), False, "",
           "source category: kernel, memcpy, memset, annotation, cpu_op, action, comm, model"),
    Column("name", pa.string(), False, "", "kernel / op / annotation name as recorded"),
    Column("step", pa.int32(), True, "",
           "training step (iteration), when known; PRE_TRACE_STEP (-2): a GPU span launched "
           "before the trace began, in no step"),
    Column("stage", pa.int32(), True, "", "pipeline stage index, when known"),
    Column("microbatch", pa.int32(), True, "", "micro-batch index, when known"),
    Column("op", pa.string(), True, "", "pipeline op: one of OPS, when known"),
    Column("start_ns", pa.int64(), False, "ns", "start on the run clock"),
    Column("end_ns", pa.int64(), False, "ns", "end on the run clock (>= start_ns)"),
    Column("sms", pa.int32(), True, "SMs", "SMs held: min(grid blocks, SMs per GPU); kernels only"),
    Column("bytes", pa.int64(), True, "bytes", "payload moved by a communication span"),
    Column("stream", pa.int64(), True, "", "CUDA stream id (GPU spans)"),
    Column("tid", pa.int64(), True, "", "host thread id (host spans)"),
    Column("device", pa.int32(), True, "", "local GPU index (GPU spans)"),
    Column("pg", pa.string(), True, "", "process group name / description of a collective"),
    Column("annotation", pa.string(), True, "",
           "innermost user annotation the span ran under (kernels inherit their launch's)"),
)

COUNTER_COLUMNS: tuple[Column, ...] = (
    Column("ts_ns", pa.int64(), False, "ns", "sample time on the run clock"),
    Column("node", pa.string(), False, "", "host name of the node"),
    Column("gpu", pa.int32(), True, "", "local GPU index; null for node-level devices (IB)"),
    Column("device", pa.string(), False, "",
           "what was measured: nvlink, nvlink:L, ib:HCA:PORT, sm, gpu, pcie, train, "
           "expert:L:E, routing:L (profiler.counters declares every device and metric)"),
    Column("metric", pa.string(), False, "",
           "metric name with its SI unit, e.g. tx_bytes_per_s, sm_util_ratio"),
    Column("value", pa.float64(), True, "(in metric)", "NaN when the sample is unavailable"),
)


def _schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.type, nullable=c.nullable) for c in columns],
        metadata={b"dualscope_schema_version": str(SCHEMA_VERSION).encode()},
    )


SPAN_SCHEMA = _schema(SPAN_COLUMNS)
COUNTER_SCHEMA = _schema(COUNTER_COLUMNS)


def empty_spans() -> pa.Table:
    return SPAN_SCHEMA.empty_table()


def empty_counters() -> pa.Table:
    return COUNTER_SCHEMA.empty_table()


def _conform(data: object, schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns from a dict of columns, a DataFrame or
    a table; missing nullable columns are filled with nulls, extra columns are refused."""
    if isinstance(data, pa.Table):
        if data.schema.equals(schema) and not any(  # fast path: already conforming
                data.column(f.name).null_count for f in schema if not f.nullable):
            return data
        table = data
    elif type(data).__name__ == "DataFrame":  # pandas, imported only by whoever made it
        table = pa.Table.from_pandas(data, preserve_index=False)
    elif isinstance(data, dict):
        n = max((len(v) for v in data.values()), default=0)
        table = pa.table({k: v for k, v in data.items()}) if data else pa.table({})
        if table.num_columns == 0:
            table = pa.table({"_": pa.nulls(n)}).drop(["_"])
    else:
        raise TypeError(f"cannot build a table from {type(data).__name__}")
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"unknown columns {sorted(extra)}; the schema has {schema.names}")
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
            if not field.nullable and col.null_count:
                raise ValueError(f"column {field.name!r} may not hold nulls")
            arrays.append(col)
        elif field.nullable:
            arrays.append(pa.nulls(n, field.type))
        else:
            raise ValueError(f"required column {field.name!r} is missing")
    return pa.Table.from_arrays(arrays, schema=schema)


def spans_table(data: object) -> pa.Table:
    """Conform ``data`` (dict of columns, DataFrame or Table) to :data:`SPAN_SCHEMA`."""
    return _conform(data, SPAN_SCHEMA)


def counters_table(data: object) -> pa.Table:
    """Conform ``data`` (dict of columns, DataFrame or Table) to :data:`COUNTER_SCHEMA`."""
    return _conform(data, COUNTER_SCHEMA)
