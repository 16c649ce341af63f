"""Pure DataFrame transforms that shape counters and analysis tables for the figures of the
Links, SMs and Experts pages. No Dash, no I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd

from profiler.analysis.intervals import bin_time_mean
from profiler.analysis.params import natural_key
from profiler.counters import NVLINK, NVLINK_LINK, device_kinds

__all__ = ["bin_mean", "link_wide", "link_long", "is_single_link", "sm_binned", "expert_wide", "expert_layers",
           "routing_long",
           "metric_long", "MAX_BINS", "phase_buckets", "bias_bands", "PHASE_ORDER", "spread",
           "bias_spread"]

#: columns a time heatmap or area chart gets at most
MAX_BINS = 600


def _per_unique(values: pd.Series, fn: object) -> np.ndarray:
    """``fn`` applied to each distinct value only (string ops on 100k rows are slow)."""
    codes, uniques = pd.factorize(values.astype("str"), use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    for i, u in enumerate(uniques):  # element by element: tuples stay single objects
        mapped[i] = fn(u)  # type: ignore[operator]
    return mapped[codes]


def bin_mean(row: np.ndarray, start: np.ndarray, end: np.ndarray, value: np.ndarray,
             n_rows: int, x0: int, x1: int, bins: int) -> np.ndarray:
    """Time-weighted mean of piecewise-constant ``value`` (held over ``[start, end)``) in each
    of ``bins`` equal bins of ``[x0, x1)``, per row: an ``n_rows x bins`` array
    (:func:`profiler.analysis.intervals.bin_time_mean`)."""
    return bin_time_mean(start, end, value, row, n_rows, x0, (x1 - x0) / bins, bins)


def _label_codes(df: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, names): ``node3 mlx5_2:1`` for IB ports, ``node3 gpu2`` /
    ``node3 gpu2 link5`` for NVLink."""
    if len(df) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
    g = df.groupby(["node", "gpu", "device"], dropna=False, sort=False, observed=True)
    codes = g.ngroup().to_numpy()
    names = []
    for node, gpu, dev in g.size().index:
        dev = str(dev)
        if kind == "ib":
            names.append(f"{node} {dev[3:]}")
        else:
            link = dev.partition(":")[2]
            gtxt = "?" if pd.isna(gpu) else str(int(gpu))
            names.append(f"{node} gpu{gtxt}" + (f" link{link}" if link else ""))
    return codes, np.array(names, dtype=object)


def is_single_link(label: str) -> bool:
    """Whether a line's label (:func:`_label_codes`) names one NVLink link of a GPU, not the
    GPU's total or an IB port."""
    return " link" in label


def _label(df: pd.DataFrame, kind: str) -> np.ndarray:
    """The name of each row's link (:func:`_label_codes`)."""
    codes, names = _label_codes(df, kind)
    return names[codes]


def link_wide(counters: pd.DataFrame, kind: str, metric: str, peak: float | None, t0_ns: int,
              max_bins: int = MAX_BINS) -> pd.DataFrame:
    """Share of ``peak`` per GPU's NVLink (``kind`` ``nvlink``: the GPU's total over its
    links, device ``nvlink``) or per IB port (rows, labelled ``node gpuN`` or ``node
    mlx5_N:P``) over time (columns: seconds since ``t0_ns``); means over bins when there are
    more than ``max_bins`` samples. Without a peak the values are bytes/s / max. A single
    link's rows (``nvlink:L``, which the probe writes beside the GPU's total) are not rows of
    it: the peak is the GPU's, and Prometheus' cluster rows are the totals too (a single link
    against its own peak is in the Links KPIs, :func:`dashboard.overview_model.link_summary`)."""
    c = counters.loc[(device_kinds(counters["device"]) == kind)
                     & (counters["metric"].astype("str") == metric)]
    if len(c) == 0:
        return pd.DataFrame()
    codes, names = _label_codes(c, kind)
    # two links of one name (a node label repeated across devices) are one row, as before
    names, merged = np.unique(names, return_inverse=True)
    codes = merged[codes]
    ts = c["ts_ns"].to_numpy(dtype=np.int64)
    uniq, at = np.unique(ts, return_inverse=True)
    if len(uniq) > max_bins:
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        edges = lo + (np.arange(max_bins + 1) * (hi - lo)) // max_bins
        b = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, max_bins - 1)
        centre = (edges[:-1] + edges[1:]) / 2
        used, at = np.unique(b, return_inverse=True)
        cols = centre[used]
    else:
        cols = uniq.astype(np.float64)
    # the mean per (link, column) of the samples that are not NaN (pivot_table's rule)
    v = c["value"].to_numpy(dtype=float)
    ok = ~np.isnan(v)
    cell = codes * len(cols) + at
    size = len(names) * len(cols)
    total = np.bincount(cell[ok], weights=v[ok], minlength=size)
    count = np.bincount(cell[ok], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / count).reshape(len(names), len(cols))
    keep = (count.reshape(len(names), len(cols)) > 0)
    rows, colmask = keep.any(axis=1), keep.any(axis=0)  # pivot_table drops all-NaN rows/cols
    mean, names, cols = mean[rows][:, colmask], names[rows], cols[colmask]
    order = sorted(range(len(names)), key=lambda i: natural_key(str(names[i])))
    wide = pd.DataFrame(mean[order], index=pd.Index(names[order], name="label"),
                        columns=pd.Index(cols, name="col"))
    scale = peak if peak else np.nanmax(wide.to_numpy()) or 1.0
    wide = wide / scale
    wide.columns = (wide.columns.to_numpy(dtype=np.float64) - t0_ns) / 1e9
    return wide


def link_long(counters: pd.DataFrame, kind: str, metric: str, node: str | None,
              t0_ns: int) -> pd.DataFrame:
    """Samples of one node's links of ``kind`` as t_s, series, value (bytes/s): per GPU its
    NVLink total, and a GPU's single links (``nvlink:L``) only when it has no total; per
    IB port. (With the probe's counters a GPU has both: its 18 links as panels beside it
    made 152 panels a node, drawn over each other, at ~3 MB a redraw.)"""
    c = counters.loc[(device_kinds(counters["device"], family=True) == kind)
                     & (counters["metric"].astype("str") == metric)]
    if node is not None:
        c = c.loc[c["node"].astype("str") == node]
    if kind == NVLINK and len(c):  # a GPU's single links where it has no total
        exact = device_kinds(c["device"])
        node_code = pd.factorize(c["node"].astype("str"))[0].astype(np.int64)
        gpu = c["gpu"].to_numpy(dtype=np.float64, na_value=-1.0).astype(np.int64)
        key = node_code * (1 << 33) + (gpu + 1)  # (node, gpu); gpu is an int32 or null
        covered = (exact == NVLINK_LINK) & np.isin(key, key[exact == NVLINK])
        c = c.loc[~covered]
    if len(c) == 0:
        return pd.DataFrame(columns=["t_s", "series", "value"])
    out = pd.DataFrame({"t_s": (c["ts_ns"].to_numpy(dtype=np.int64) - t0_ns) / 1e9,
                        "series": _label(c, kind),
                        "value": c["value"].to_numpy(dtype=float)})
    return out.sort_values(["series", "t_s"], kind="stable").reset_index(drop=True)


def sm_binned(series: pd.DataFrame, ranks: list[int] | None, x0: int, x1: int, t0_ns: int,
              bins: int = MAX_BINS) -> pd.DataFrame:
    """Mean comm / compute SMs per time bin from :func:`profiler.analysis.sm_split_series`,
    averaged over ``ranks`` (all when None). Columns: t_s, comm_sms, compute_sms."""
    s = series if ranks is None else series.loc[series["rank"].isin(ranks)]
    if len(s) == 0 or x1 <= x0:
        return pd.DataFrame(columns=["t_s", "comm_sms", "compute_sms"])
    n = int(s["rank"].nunique())
    start = s["t_ns"].to_numpy(dtype=np.int64)
    end = start + s["duration_ns"].to_numpy(dtype=np.int64)
    zero = np.zeros(len(s), dtype=np.int64)
    bins = max(1, min(bins, int((x1 - x0) // 1000) or 1))
    comm = bin_mean(zero, start, end, s["comm_sms"].to_numpy(dtype=float), 1, x0, x1, bins)[0] / n
    comp = bin_mean(zero, start, end, s["compute_sms"].to_numpy(dtype=float), 1, x0, x1, bins)[0] / n
    width = (x1 - x0) / bins
    t = (x0 + (np.arange(bins) + 0.5) * width - t0_ns) / 1e9
    return pd.DataFrame({"t_s": t, "comm_sms": comm, "compute_sms": comp})


def _steps(c: pd.DataFrame, counters: pd.DataFrame) -> np.ndarray:
    """Step of each per-step counter row: the ``train/step`` value written at the same time
    (the reference run writes it beside every per-step row), else the sample's order within
    its device."""
    tr = counters.loc[(counters["device"].astype("str") == "train")
                      & (counters["metric"].astype("str") == "step"), ["ts_ns", "value"]]
    by_ts = dict(zip(tr["ts_ns"].to_numpy().tolist(), tr["value"].to_numpy().tolist(), strict=True))
    own = c.groupby(c["device"].astype("str"), sort=False)["ts_ns"].rank(method="dense")
    fallback = own.to_numpy(dtype=np.int64) - 1
    if not by_ts:
        return fallback
    mapped = c["ts_ns"].map(by_ts)
    return np.where(mapped.notna(), mapped.fillna(-1).to_numpy(dtype=float), fallback).astype(np.int64)


def _expert_parts(device: str) -> tuple[int, int]:
    """``expert:L:E`` -> (L, E); ``expert:E`` -> (0, E)."""
    parts = device.split(":")
    return (int(parts[1]), int(parts[2])) if len(parts) >= 3 else (0, int(parts[1]))


def expert_layers(counters: pd.DataFrame) -> list[int]:
    """MoE layers that report per-expert counters (``expert:L:E``; ``expert:E`` is layer 0)."""
    dev = pd.Series(counters["device"].astype("str").unique())
    dev = dev[dev.str.startswith("expert:")]
    return sorted({_expert_parts(d)[0] for d in dev})


def expert_wide(counters: pd.DataFrame, metric: str = "tokens", layer: int = 0) -> pd.DataFrame:
    """Experts (rows, int) by step (columns) of ``metric`` for one MoE layer."""
    dev = counters["device"].astype("str")
    c = counters.loc[dev.str.startswith("expert:").to_numpy(dtype=bool)
                     & (counters["metric"].astype("str") == metric).to_numpy(dtype=bool)]
    if len(c) == 0:
        return pd.DataFrame()
    parts = _per_unique(c["device"], _expert_parts)
    lay = np.array([p[0] for p in parts], dtype=np.int64)
    exp = np.array([p[1] for p in parts], dtype=np.int64)
    keep = lay == layer
    if not keep.any():
        return pd.DataFrame()
    df = pd.DataFrame({"expert": exp[keep], "step": _steps(c, counters)[keep],
                       "v": c["value"].to_numpy(dtype=float)[keep]})
    return df.pivot_table(index="expert", columns="step", values="v", aggfunc="mean", sort=True)


def routing_long(counters: pd.DataFrame, metric: str = "nodes_per_token_mean") -> pd.DataFrame:
    """x (step), series (``layer L``), value of a per-layer routing metric (``routing:L``;
    plain ``routing`` is layer 0)."""
    dev = counters["device"].astype("str")
    c = counters.loc[(dev.str.startswith("routing")).to_numpy(dtype=bool)
                     & (counters["metric"].astype("str") == metric).to_numpy(dtype=bool)]
    if len(c) == 0:
        return pd.DataFrame(columns=["x", "series", "value"])
    layer = _per_unique(c["device"], lambda d: d.partition(":")[2] or "0")
    return pd.DataFrame({"x": _steps(c, counters), "series": "layer " + layer.astype(str),
                         "value": c["value"].to_numpy(dtype=float)}).sort_values(["series", "x"])


def metric_long(counters: pd.DataFrame, device: str, metric: str) -> pd.DataFrame:
    """x (step), series, value of one per-step metric (e.g. train/loss), mean per step."""
    c = counters.loc[(counters["device"].astype("str") == device)
                     & (counters["metric"].astype("str") == metric)]
    if len(c) == 0:
        return pd.DataFrame(columns=["x", "series", "value"])
    g = pd.DataFrame({"x": _steps(c, counters), "value": c["value"].to_numpy(dtype=float)})
    g = g.groupby("x", sort=True)["value"].mean().reset_index()
    return pd.DataFrame({"x": g["x"].to_numpy(), "series": metric, "value": g["value"].to_numpy()})


PHASE_ORDER = ("dispatch", "combine", "disp+comb", "PP", "other", "idle")


def phase_buckets(summary: pd.DataFrame) -> pd.DataFrame:
    """Fold the phase labels of :func:`profiler.analysis.phase_summary` (``dispatch+pp``,
    ``combine+other_comm`` …) into :data:`PHASE_ORDER`: one EP phase, both (``disp+comb``),
    PP only, other communication, or none (``idle``). Sample-weighted means; same columns as the input."""
    if summary is None or len(summary) == 0:
        return pd.DataFrame(columns=["device_kind", "phase", "mean_bytes_per_s",
                                     "mean_share_of_peak", "samples"])

    def bucket(label: str) -> str:
        parts = set(str(label).split("+"))
        if {"dispatch", "combine"} <= parts:
            return "disp+comb"
        for p in ("dispatch", "combine"):
            if p in parts:
                return p
        if "pp" in parts:
            return "PP"
        return "other" if "other_comm" in parts else "idle"

    df = summary.assign(phase=summary["phase"].map(bucket),
                        _b=summary["mean_bytes_per_s"] * summary["samples"],
                        _s=summary["mean_share_of_peak"] * summary["samples"])
    g = df.groupby(["device_kind", "phase"], sort=False)[["_b", "_s", "samples"]].sum().reset_index()
    g["mean_bytes_per_s"] = g["_b"] / g["samples"]
    g["mean_share_of_peak"] = g["_s"] / g["samples"]
    g["_o"] = g["phase"].map({p: i for i, p in enumerate(PHASE_ORDER)})
    g = g.sort_values(["device_kind", "_o"])
    return g[["device_kind", "phase", "mean_bytes_per_s", "mean_share_of_peak", "samples"]]


def bias_bands(counters: pd.DataFrame, hottest: int = 3, layer: int = 0) -> pd.DataFrame:
    """x (step), series, value: the spread of the routing bias over experts (min, 5th
    percentile, median, 95th, max) and the trajectories of the ``hottest`` experts of the last
    step (most tokens)."""
    bias = expert_wide(counters, "bias", layer)
    if bias.size == 0:
        return pd.DataFrame(columns=["x", "series", "value"])
    rows = []
    for name, q in (("max", 1.0), ("p95", 0.95), ("median", 0.5), ("p5", 0.05), ("min", 0.0)):
        v = bias.quantile(q, axis=0)
        rows.append(pd.DataFrame({"x": bias.columns, "series": f"{name} over experts", "value": v.to_numpy()}))
    tokens = expert_wide(counters, "tokens", layer)
    if tokens.size:
        for e in tokens.iloc[:, -1].sort_values(ascending=False).index[:hottest]:
            if e in bias.index:
                rows.append(pd.DataFrame({"x": bias.columns, "series": f"expert {e} (hot)",
                                          "value": bias.loc[e].to_numpy()}))
    return pd.concat(rows, ignore_index=True)


SPREAD_COLUMNS = ["x", "min", "p5", "median", "p95", "max"]


def spread(long: pd.DataFrame) -> pd.DataFrame:
    """Per ``x``: min, 5th percentile, median, 95th percentile and max of ``value`` over the
    series of ``long`` (x, series, value)."""
    if len(long) == 0:
        return pd.DataFrame(columns=SPREAD_COLUMNS)
    g = long.groupby("x", sort=True)["value"]
    return pd.DataFrame({"x": g.min().index.to_numpy(), "min": g.min().to_numpy(),
                         "p5": g.quantile(0.05).to_numpy(), "median": g.median().to_numpy(),
                         "p95": g.quantile(0.95).to_numpy(), "max": g.max().to_numpy()})


def bias_spread(counters: pd.DataFrame, hottest: int = 3,
                layer: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The routing bias of one MoE layer as (spread over experts: :data:`SPREAD_COLUMNS`,
    the ``hottest`` experts of the last step: x, series, value), from :func:`bias_bands`."""
    bands = bias_bands(counters, hottest, layer)
    if len(bands) == 0:
        return pd.DataFrame(columns=SPREAD_COLUMNS), bands
    names = {"min over experts": "min", "p5 over experts": "p5", "median over experts": "median",
             "p95 over experts": "p95", "max over experts": "max"}
    is_band = bands["series"].isin(list(names))
    wide = bands.loc[is_band].pivot_table(index="x", columns="series", values="value",
                                          sort=True).rename(columns=names)
    out = wide.reset_index()[SPREAD_COLUMNS]
    return out, bands.loc[~is_band].reset_index(drop=True)
