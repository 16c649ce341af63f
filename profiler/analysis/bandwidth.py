"""Achieved link bandwidth from counters, against the hardware peak, overall and per phase.

Counters are already rates (``tx_bytes_per_s`` / ``rx_bytes_per_s``, computed by the probes
from cumulative counters with resets and wraps dropped). Peaks come from the manifest
topology: ``nvlink`` (all links of a GPU) against ``nvlink_peak_bytes_per_s``, ``nvlink:L``
(one link) against ``nvlink_link_peak_bytes_per_s``, ``ib:HCA:PORT`` against
``ib_peak_bytes_per_s``; other devices have no peak (NaN).

Phases: each communication span is labelled ``dispatch`` or ``combine`` when its name or
annotation says so, ``pp`` when it is on the ``pp_comm`` lane or named send/recv, else
``other_comm``. A counter sample of node n at ts takes the set of phases running on any rank
of node n at ts (``dispatch+combine`` when both; ``none`` when no communication span runs),
found with one searchsorted per phase over the per-node union of that phase's spans.
Rank-to-node mapping: :func:`~profiler.analysis.params.rank_node_map`.

:func:`comm_bandwidth` pools the samples of several phases (by default any sample taken while
dispatch or combine runs): counter samples average over their interval, so a sample that a
transfer covers only in part reads low, and the 95th percentile over the samples taken during
communication is the rate a link reaches while it moves data (what the dashboard reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..counters import IB, NVLINK, NVLINK_LINK, device_kinds
from .intervals import group_codes, union
from .params import COMM_LANES, AnalysisParams, rank_node_map

__all__ = ["PHASES", "EP_PHASES", "span_phases", "phase_intervals", "link_bandwidth",
           "bandwidth_by_phase", "comm_bandwidth", "phase_summary", "label_samples", "codes_in"]

PHASES = ("dispatch", "combine", "pp", "other_comm")
#: the expert-parallel phases, during which :func:`comm_bandwidth` reads the links by default
EP_PHASES = ("dispatch", "combine")
_KEYS = ["node", "gpu", "device", "metric"]


def span_phases(spans: pd.DataFrame) -> pd.Series:
    """Phase of each communication span (one of :data:`PHASES`); null off the comm lanes.
    Classified once per distinct (lane, name, annotation), then broadcast."""
    is_comm = spans["lane"].isin(list(COMM_LANES)).to_numpy(dtype=bool)
    out = np.full(len(spans), None, dtype=object)
    if is_comm.any():
        sub = spans.loc[is_comm, ["lane", "name", "annotation"]]
        codes, uniq = group_codes(sub, ["lane", "name", "annotation"])
        text = (uniq["name"].astype("str") + " "
                + uniq["annotation"].astype("str").fillna("")).str.lower()
        dispatch = text.str.contains("dispatch", regex=False).to_numpy(dtype=bool)
        combine = text.str.contains("combine", regex=False).to_numpy(dtype=bool)
        pp = ((uniq["lane"] == "pp_comm").to_numpy(dtype=bool)
              | text.str.contains(r"send|recv").to_numpy(dtype=bool))
        label = np.select([dispatch, combine, pp], ["dispatch", "combine", "pp"], "other_comm")
        out[is_comm] = label[codes]
    return pd.Series(out, index=spans.index, dtype="str")


def phase_intervals(spans: pd.DataFrame, rank_nodes: Mapping[int, str]) -> pd.DataFrame:
    """Union of each phase's communication spans per node. Columns: ``node``, ``phase``,
    ``start_ns``, ``end_ns`` (ns, run clock); disjoint within (node, phase)."""
    phase = span_phases(spans)
    node = spans["rank"].map(dict(rank_nodes)).astype("str")
    keep = phase.notna() & node.notna()
    df = pd.DataFrame({"node": node[keep], "phase": phase[keep],
                       "start_ns": spans["start_ns"][keep], "end_ns": spans["end_ns"][keep]})
    codes, keys = group_codes(df, ["node", "phase"])
    g, s, e = union(codes, df["start_ns"].to_numpy(), df["end_ns"].to_numpy())
    out = keys.iloc[g].reset_index(drop=True)
    return out.assign(start_ns=s, end_ns=e)


def codes_in(values: pd.Series, names: pd.Index) -> np.ndarray:
    """Position of each value in ``names`` (-1: not there), through the categories when the
    column is categorical (a counter table repeats a few node names millions of times)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = names.get_indexer(values.cat.categories.astype(str))
        codes = values.cat.codes.to_numpy()
    else:  # factorised first (Arrow-backed strings: in C++), then each distinct name looked up
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        cats = names.get_indexer(np.asarray(uniques, dtype=object).astype(str))
    if len(cats) == 0:
        return np.full(len(codes), -1, dtype=np.int64)
    return np.where(codes >= 0, cats[np.maximum(codes, 0)], -1)


def label_samples(counters: pd.DataFrame, intervals: pd.DataFrame) -> pd.Series:
    """Phase label of each counter sample: active phases joined by ``+`` or ``none``."""
    n = len(counters)
    if n == 0:
        return pd.Series([], dtype="str", index=counters.index)
    col = counters["node"]
    names = np.asarray(col.cat.categories.astype(str) if isinstance(col.dtype, pd.CategoricalDtype)
                       else pd.unique(col), dtype=object)
    nodes = pd.Index(pd.unique(np.concatenate([names, intervals["node"].to_numpy(dtype=object)])))
    cnode = codes_in(col, nodes)
    ts = counters["ts_ns"].to_numpy(dtype=np.int64)
    base = min(ts.min(), intervals["start_ns"].min()) if len(intervals) else ts.min()
    hi = max(ts.max(), intervals["end_ns"].max()) if len(intervals) else ts.max()
    span = int(hi - base) + 1
    if span * (len(nodes) + 1) >= 2**62:
        raise ValueError("time range too large to label counter samples")
    key = cnode * span + (ts - base)
    mask = np.zeros(n, dtype=np.int64)
    for bit, phase in enumerate(PHASES):  # one vectorised pass per phase, not per sample
        iv = intervals.loc[intervals["phase"] == phase]
        if len(iv) == 0:
            continue
        inode = nodes.get_indexer(iv["node"].to_numpy(dtype=object))
        ks = inode * span + (iv["start_ns"].to_numpy() - base)
        ke = inode * span + (iv["end_ns"].to_numpy() - base)
        order = np.argsort(ks, kind="stable")
        ks, ke = ks[order], ke[order]
        idx = np.searchsorted(ks, key, side="right") - 1
        active = (idx >= 0) & (key < ke[np.maximum(idx, 0)])
        mask |= active.astype(np.int64) << bit
    names = np.array([
        "+".join(p for b, p in enumerate(PHASES) if m >> b & 1) or "none"
        for m in range(1 << len(PHASES))
    ], dtype=object)
    return pd.Series(names[mask], index=counters.index, dtype="str")


def _peaks(device: pd.Series, params: AnalysisParams) -> np.ndarray:
    kind = device_kinds(device)
    nan = np.nan
    return np.select(
        [kind == NVLINK, kind == NVLINK_LINK, kind == IB],
        [params.nvlink_peak_bytes_per_s or nan, params.nvlink_link_peak_bytes_per_s or nan,
         params.ib_peak_bytes_per_s or nan],
        nan,
    ).astype(np.float64)


def _rates(counters: pd.DataFrame) -> pd.DataFrame:
    m = counters["metric"].astype("str").str.endswith("_bytes_per_s").to_numpy(dtype=bool)
    return counters.loc[m]


def _stats(df: pd.DataFrame, keys: list[str], params: AnalysisParams) -> pd.DataFrame:
    g = df.groupby(keys, sort=True, dropna=False, observed=True)["value"]
    out = g.agg(samples="count", mean_bytes_per_s="mean", max_bytes_per_s="max")
    out["unavailable_samples"] = g.size() - out["samples"]
    out["p50_bytes_per_s"] = g.quantile(0.5)
    out["p95_bytes_per_s"] = g.quantile(0.95)
    out = out.reset_index()
    peak = _peaks(out["device"], params)
    out["peak_bytes_per_s"] = peak
    for stat in ("mean", "p95", "max"):
        out[f"{stat}_share_of_peak"] = out[f"{stat}_bytes_per_s"] / peak
    order = keys + ["samples", "unavailable_samples", "mean_bytes_per_s", "p50_bytes_per_s",
                    "p95_bytes_per_s", "max_bytes_per_s", "peak_bytes_per_s",
                    "mean_share_of_peak", "p95_share_of_peak", "max_share_of_peak"]
    return out[order]


def link_bandwidth(counters: pd.DataFrame, *, params: AnalysisParams) -> pd.DataFrame:
    """Achieved bandwidth per (node, gpu, device, metric) over ``*_bytes_per_s`` metrics.

    Columns: ``node``; ``gpu`` (nullable: node-level devices such as IB ports); ``device``;
    ``metric``; ``samples`` (count of non-NaN samples); ``unavailable_samples`` (NaN
    samples); ``mean_bytes_per_s``, ``p50_bytes_per_s``, ``p95_bytes_per_s``,
    ``max_bytes_per_s`` (bytes/s); ``peak_bytes_per_s`` (bytes/s, one direction; NaN when
    unknown); ``mean_share_of_peak``, ``p95_share_of_peak``, ``max_share_of_peak`` (0..1).
    """
    return _stats(_rates(counters), _KEYS, params)


def bandwidth_by_phase(counters: pd.DataFrame, spans: pd.DataFrame, *,
                       params: AnalysisParams, rank_nodes: Mapping[int, str]) -> pd.DataFrame:
    """Achieved bandwidth per (node, gpu, device, metric, phase); a sample's phase is the
    set of communication phases running on its node at ``ts_ns`` (see the module doc).

    Columns: those of :func:`link_bandwidth` plus ``phase`` (``dispatch``, ``combine``,
    ``pp``, ``other_comm``, several joined by ``+``, or ``none``) after ``metric``.
    """
    rates = _rates(counters)
    intervals = phase_intervals(spans, rank_nodes)
    rates = rates.assign(phase=label_samples(rates, intervals))
    return _stats(rates, _KEYS + ["phase"], params)


def comm_bandwidth(counters: pd.DataFrame, spans: pd.DataFrame, *, params: AnalysisParams,
                   rank_nodes: Mapping[int, str] | None = None,
                   phases: Sequence[str] = EP_PHASES) -> pd.DataFrame:
    """Achieved bandwidth per (node, gpu, device, metric) over the samples taken while any of
    ``phases`` runs on the sample's node (by default dispatch or combine; see the module doc).

    Columns: those of :func:`link_bandwidth`; ``p95_bytes_per_s`` (bytes/s) is the achieved
    rate while communicating and ``p95_share_of_peak`` (0..1, NaN when the peak is unknown)
    its share of the peak (``nvlink:L`` against the per-link peak). ``rank_nodes`` defaults
    to :func:`~.params.rank_node_map` of the spans' ranks and the counters' nodes. No rows
    when no sample falls in ``phases`` (no spans, or the rank-to-node mapping unknown).
    """
    bad = sorted(set(phases) - set(PHASES))
    if bad:
        raise ValueError(f"unknown phases {bad}; use any of {', '.join(PHASES)}")
    rates = _rates(counters)
    if len(rates) == 0 or len(spans) == 0:
        return _stats(rates.iloc[:0], _KEYS, params)
    if rank_nodes is None:
        rank_nodes = rank_node_map(spans["rank"].unique(), counters["node"].unique(), params)
    label = label_samples(rates, phase_intervals(spans, rank_nodes))
    codes, uniq = pd.factorize(label)  # a few distinct labels: test each once
    wanted = set(phases)
    hit = np.array([bool(wanted & set(str(u).split("+"))) for u in uniq], dtype=bool)
    keep = hit[codes] if len(uniq) else np.zeros(len(rates), dtype=bool)
    return _stats(rates.loc[keep], _KEYS, params)


def phase_summary(by_phase: pd.DataFrame) -> pd.DataFrame:
    """Aggregate :func:`bandwidth_by_phase` over nodes and GPUs.

    One row per (``device_kind`` (:func:`profiler.counters.device_kind`: ``nvlink``,
    ``nvlink:L``, ``ib``, ...), ``metric``, ``phase``).
    Columns: ``samples`` (count); ``mean_bytes_per_s`` (bytes/s, sample-weighted mean);
    ``max_bytes_per_s`` (bytes/s); ``mean_share_of_peak`` (0..1, sample-weighted mean of the
    per-device mean shares; NaN when the peak is unknown).
    """
    df = by_phase.loc[by_phase["samples"] > 0]
    df = df.assign(
        device_kind=device_kinds(df["device"]),
        _sum=df["mean_bytes_per_s"] * df["samples"],
        _share=df["mean_share_of_peak"] * df["samples"],
    )
    g = df.groupby(["device_kind", "metric", "phase"], sort=True)
    out = g.agg(samples=("samples", "sum"), _sum=("_sum", "sum"),
                max_bytes_per_s=("max_bytes_per_s", "max"), _share=("_share", "sum"),
                _known=("mean_share_of_peak", "count"))
    out["mean_bytes_per_s"] = out["_sum"] / out["samples"]
    out["mean_share_of_peak"] = np.where(out["_known"] > 0, out["_share"] / out["samples"],
                                         np.nan)
    return out.reset_index()[["device_kind", "metric", "phase", "samples", "mean_bytes_per_s",
                              "max_bytes_per_s", "mean_share_of_peak"]]
