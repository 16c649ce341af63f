"""The one counter-row buffer: what every writer of counter rows (the probe collectors, the
reference run's per-step counters) appends to before the rows go to a counter stream.

Plain lists: appending is the cheapest thing Python does, and the Arrow conversion happens
once per flush (:meth:`CounterRows.drain`), not once per row. Names and units of the metrics
are declared in :mod:`profiler.counters`; the row layout is :data:`profiler.schema.COUNTER_SCHEMA`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .schema import COUNTER_SCHEMA

__all__ = ["CounterRows"]


class CounterRows:
    """Column buffers of counter rows (one sample after another).

    ``add(gpu, device, metric, value)`` stamps the row with :attr:`ts_ns`, the time of the
    sample being taken (set it before each sample); :meth:`drain` returns the buffered rows as
    one table of :data:`~profiler.schema.COUNTER_SCHEMA` and empties the buffers.
    """

    __slots__ = ("ts_ns", "ts", "gpu", "device", "metric", "value")

    def __init__(self, ts_ns: int = 0) -> None:
        self.ts_ns = ts_ns
        self.ts: list[int] = []
        self.gpu: list[int | None] = []
        self.device: list[str] = []
        self.metric: list[str] = []
        self.value: list[float] = []

    def add(self, gpu: int | None, device: str, metric: str, value: float) -> None:
        self.ts.append(self.ts_ns)
        self.gpu.append(gpu)
        self.device.append(device)
        self.metric.append(metric)
        self.value.append(value)

    def extend(self, gpu: int | None, devices: list[str], metrics: list[str],
               values: list[float]) -> None:
        """Rows of one GPU (or node-level device set) at the current sample time."""
        n = len(values)
        self.ts.extend([self.ts_ns] * n)
        self.gpu.extend([gpu] * n)
        self.device.extend(devices)
        self.metric.extend(metrics)
        self.value.extend(values)

    def add_at(self, ts_ns: int, gpu: int | None, device: str, metric: str, value: float) -> None:
        """A row for another time than the current sample (series computed after the fact)."""
        self.ts.append(ts_ns)
        self.gpu.append(gpu)
        self.device.append(device)
        self.metric.append(metric)
        self.value.append(value)

    def __len__(self) -> int:
        return len(self.ts)

    def drain(self, node: str) -> pa.Table:
        """Return the buffered rows as a table of the counter schema (``node`` on every row)
        and empty the buffers. Built column by column (``pa.array(ints, pa.int64())`` on
        nanosecond timestamps is ten times slower than going through numpy)."""
        n = len(self.ts)
        table = pa.Table.from_arrays([
            pa.array(np.fromiter(self.ts, dtype=np.int64, count=n)),
            pa.nulls(n, pa.string()).fill_null(node),
            pa.array(self.gpu, pa.int32()),
            pa.array(self.device, pa.string()),
            pa.array(self.metric, pa.string()),
            pa.array(self.value, pa.float64()),
        ], schema=COUNTER_SCHEMA)
        self.ts, self.gpu, self.device, self.metric, self.value = [], [], [], [], []
        return table
