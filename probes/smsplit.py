"""SM split: how many SMs communication and compute kernels hold, per GPU over time, from
kernel activity (torch.profiler / Kineto kernels), as DESIGN.md defines it.

NVML cannot answer this: GPM's SM utilisation is one number for the whole GPU and cannot tell
an NCCL or DeepEP kernel from a GEMM. The split needs kernels with their grid size and a
comm / compute decision, which the one kernel rule of the importer makes
(:func:`profiler.importers.kernels.kernel_lanes`: :func:`profiler.classify.classify_kernels` --
stream, process group and name together, never the name alone -- and the SMs held) and records
as the span's lane. This module reuses that rule and the sweep line of
:func:`profiler.analysis.sm_split.sm_split_series`; it adds only

- :func:`interval_means`: the step function averaged over the agent's sample intervals, so
  ``comm_sms`` / ``compute_sms`` rows mean the same as every other counter row (the mean over
  the interval that ends at ``ts_ns``; SM-seconds = value x interval);
- :func:`kernel_spans`: raw kernel records (e.g. from a live ``torch.profiler`` hook) to
  classified spans, through the same rule;
- :func:`declared_caps`: NCCL channel limits and DeepEP's SM setting when this process can
  see them (environment; ``deep_ep.Buffer.num_sms`` when deep_ep is imported);
- :class:`SmSplitCollector`: tails the kernel spans of a run (``--kernels-from RUN``, where
  the reference job's periodic profiler captures or ``dualscope import`` write them) and
  writes the series as counter rows on device ``sm``.

Rows exist only for times a capture covers: outside them the split is unknown, not zero.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis.sm_split import sm_split_series
from profiler.errors import DualscopeError
from profiler.importers.kernels import kernel_lanes
from profiler.store import RunReader

from .base import CollectorBase, Rows, Unavailable

__all__ = ["CAP_ENV", "SmSplitCollector", "declared_caps", "interval_means", "kernel_spans"]

#: environment variables that bound the SMs NCCL kernels take (one CTA per channel)
CAP_ENV = ("NCCL_MIN_NCHANNELS", "NCCL_MAX_NCHANNELS", "NCCL_MIN_CTAS", "NCCL_MAX_CTAS")


def declared_caps(environ: Mapping[str, str] | None = None,
                  modules: Mapping[str, Any] | None = None) -> dict[str, int | str]:
    """Declared SM caps visible to this process: the NCCL variables of :data:`CAP_ENV` that
    are set, and ``deep_ep.Buffer.num_sms`` when ``deep_ep`` is imported. Values that are not
    integers are kept as the text found."""
    env = os.environ if environ is None else environ
    out: dict[str, int | str] = {}
    for key in CAP_ENV:
        raw = env.get(key)
        if raw:
            try:
                out[key] = int(raw)
            except ValueError:
                out[key] = raw
    mods = sys.modules if modules is None else modules
    deep_ep = mods.get("deep_ep")
    num_sms = getattr(getattr(deep_ep, "Buffer", None), "num_sms", None)
    if isinstance(num_sms, int):
        out["deep_ep.Buffer.num_sms"] = num_sms
    return out


def kernel_spans(names: Sequence[str], streams: Sequence[Hashable], grid_blocks: Sequence[float],
                 start_ns: Sequence[int], end_ns: Sequence[int], gpu: Sequence[int], *,
                 sms_per_gpu: int, has_pg: Sequence[bool] | None = None,
                 comm_patterns: Sequence[str] = ()) -> pd.DataFrame:
    """Classify raw kernel records with the importer's kernel rule
    (:func:`profiler.importers.kernels.kernel_lanes`) and return the columns the sweep line
    needs: ``rank`` (the GPU), ``lane`` (comm | compute), ``start_ns``, ``end_ns`` (ns),
    ``sms`` (min(grid blocks, SMs), nullable)."""
    keys = [(g, s) for g, s in zip(gpu, streams, strict=True)]
    k = kernel_lanes(names, keys, grid_blocks, has_pg, sms_per_gpu=sms_per_gpu,
                     comm_patterns=comm_patterns)
    sms = pd.array(np.round(k.sms), dtype="Float64").astype("Int64")  # NaN grid -> <NA>
    return pd.DataFrame({
        "rank": np.asarray(gpu, dtype=np.int64),
        "lane": k.lane.astype(str),
        "start_ns": np.asarray(start_ns, dtype=np.int64),
        "end_ns": np.asarray(end_ns, dtype=np.int64),
        "sms": sms,
    })


def interval_means(series: pd.DataFrame, *, interval_ns: int) -> pd.DataFrame:
    """Average the step function of :func:`sm_split_series` over fixed intervals.

    Intervals are ``[k * interval_ns, (k + 1) * interval_ns)`` on the run clock, from the one
    holding a rank's first change point to the one holding its last. Columns: ``rank``;
    ``ts_ns`` (ns, end of the interval); ``comm_sms``, ``compute_sms`` (SMs, time-weighted mean
    over the interval). Exact: the integral of a step function is piecewise linear, so
    interpolating it at the interval edges loses nothing.
    """
    if interval_ns <= 0:
        raise ValueError(f"interval_ns must be positive, got {interval_ns}")
    out = []
    for rank, g in series.groupby("rank", sort=True):
        t = g["t_ns"].to_numpy(dtype=np.int64)
        if len(t) == 0:
            continue
        first = (t[0] // interval_ns) * interval_ns
        last = -(-t[-1] // interval_ns) * interval_ns
        edges = np.arange(first, max(last, first + interval_ns) + 1, interval_ns, dtype=np.int64)
        cols = {"rank": np.full(len(edges) - 1, rank, dtype=np.int64), "ts_ns": edges[1:]}
        for col in ("comm_sms", "compute_sms"):
            v = g[col].to_numpy(dtype=np.float64)
            integral = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t))])
            at = np.interp(edges.astype(np.float64), t.astype(np.float64), integral)
            cols[col] = np.diff(at) / interval_ns
        out.append(pd.DataFrame(cols))
    if not out:
        return pd.DataFrame({"rank": pd.Series(dtype="int64"), "ts_ns": pd.Series(dtype="int64"),
                             "comm_sms": pd.Series(dtype="float64"),
                             "compute_sms": pd.Series(dtype="float64")})
    return pd.concat(out, ignore_index=True)


class SmSplitCollector(CollectorBase):
    """Tails the kernel spans of run ``source`` and writes ``comm_sms`` / ``compute_sms``
    rows (device ``sm``, gpu = the span's local device, else its rank) every ``every_s``."""

    name = "smsplit"

    def __init__(self, source: str | os.PathLike[str] | None, *, sms_per_gpu: int | None = None,
                 interval_s: float = 0.1, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.source = source
        self.sms_per_gpu = sms_per_gpu
        self.interval_ns = max(1, int(interval_s * 1e9))
        self._every = every_s
        self._clock = clock
        self._reader: RunReader | None = None
        self._consumed: dict[int, int] = {}
        self._due = 0.0

    def start(self) -> None:
        if self.source is None:
            raise Unavailable("no kernel source: the SM split needs kernel spans from "
                              "torch.profiler / Kineto; pass --kernels-from RUN (a run that "
                              "the reference job or 'dualscope import' writes)")
        try:
            self._reader = RunReader(self.source)
        except DualscopeError as e:
            raise Unavailable(f"cannot read kernel source: {e}") from None
        sms = self.sms_per_gpu or self._reader.manifest.topology.sms_per_gpu
        if not sms:
            raise Unavailable(f"SMs per GPU unknown: {self.source}'s manifest has no "
                              "topology.sms_per_gpu; pass --sms-per-gpu N")
        self.sms_per_gpu = int(sms)
        self._board.set(self.name, True, f"kernel spans from {self.source}, "
                                         f"{self.sms_per_gpu} SMs per GPU")

    def close(self) -> None:
        self._reader = None

    def sample(self, rows: Rows) -> None:
        now = self._clock()
        if now < self._due or self._reader is None:
            return
        self._due = now + self._every
        try:
            new = self._new_kernels()
        except (DualscopeError, OSError) as e:
            self._board.note(self.name, f"read:{type(e).__name__}",
                             f"reading kernel spans failed ({e}); retrying")
            return
        if new.empty:
            return
        device = new.groupby("rank")["device"].first()
        assert self.sms_per_gpu is not None
        series = sm_split_series(new, sms_per_gpu=self.sms_per_gpu)
        means = interval_means(series, interval_ns=self.interval_ns)
        for rank, ts, comm, comp in zip(means["rank"].tolist(), means["ts_ns"].tolist(),
                                        means["comm_sms"].tolist(), means["compute_sms"].tolist(),
                                        strict=True):
            dev = device.get(rank)
            gpu = int(rank) if dev is None or pd.isna(dev) else int(dev)
            rows.add_at(ts, gpu, "sm", "comm_sms", comm)
            rows.add_at(ts, gpu, "sm", "compute_sms", comp)

    def _new_kernels(self) -> pd.DataFrame:
        reader = self._reader
        assert reader is not None
        parts = []
        for rank in reader.ranks():
            table = reader.span_table(ranks=[rank])
            done = self._consumed.get(rank, 0)
            if table.num_rows <= done:
                continue
            self._consumed[rank] = table.num_rows
            df = table.slice(done).to_pandas()
            parts.append(df[df["kind"] == "kernel"])
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    # -- reporting ---------------------------------------------------------------------------
    def describe(self) -> list[str]:
        return [f"kernel spans from {self.source}, {self.sms_per_gpu} SMs per GPU"]
