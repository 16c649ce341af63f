"""Who owns the SMs: communication versus compute kernels over time (DESIGN.md, "SM split").

At time t on a GPU (one rank = one GPU):

- ``comm_sms``    = Σ sms over running communication kernels (lanes ``comm``/``pp_comm``),
  capped at the GPU's SM count so the split never exceeds the GPU;
- ``compute_sms`` = min(SMs − comm_sms, Σ sms over running compute kernels).

Only spans with a non-null ``sms`` take part (``sms`` is already min(grid blocks, SMs)).
A sweep line builds the step function: +sms at each start, −sms at each end, one cumulative
sum over events sorted by (rank, time). Every rank's events sum to zero, so a single global
cumulative sum is the per-rank running sum. Which kernels are communication is the
importer's decision (stream, process group, name, user overrides), recorded as the lane.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import sort_order
from .params import COMM_LANES

__all__ = ["sm_split_series", "sm_seconds"]


def _sweep(spans: pd.DataFrame, sms_per_gpu: int, comm_lanes: tuple[str, ...]):
    sms = spans["sms"]
    lane = spans["lane"]
    is_comm = lane.isin(list(comm_lanes)).to_numpy()
    keep = sms.notna().to_numpy() & (is_comm | (lane == "compute").to_numpy())
    rank = spans["rank"].to_numpy(dtype=np.int64)[keep]
    s = spans["start_ns"].to_numpy(dtype=np.int64)[keep]
    e = spans["end_ns"].to_numpy(dtype=np.int64)[keep]
    w = np.minimum(sms.to_numpy(dtype=np.int64, na_value=0)[keep], sms_per_gpu)
    c = is_comm[keep]
    r2 = np.concatenate([rank, rank])
    t2 = np.concatenate([s, e])
    d = np.concatenate([w, -w])
    c2 = np.concatenate([c, c])
    order = sort_order(r2, t2)
    r2, t2, d, c2 = r2[order], t2[order], d[order], c2[order]
    comm_sum = np.cumsum(np.where(c2, d, 0))
    comp_sum = np.cumsum(np.where(c2, 0, d))
    last = np.ones(len(t2), dtype=bool)
    last[:-1] = (r2[1:] != r2[:-1]) | (t2[1:] != t2[:-1])
    r2, t2, comm_sum, comp_sum = r2[last], t2[last], comm_sum[last], comp_sum[last]
    dur = np.zeros(len(t2), dtype=np.int64)
    same = r2[1:] == r2[:-1]
    dur[:-1] = np.where(same, t2[1:] - t2[:-1], 0)
    comm_sms = np.minimum(comm_sum, sms_per_gpu)
    compute_sms = np.clip(np.minimum(sms_per_gpu - comm_sms, comp_sum), 0, None)
    return r2, t2, dur, comm_sms, compute_sms, comp_sum, (rank, s, e, c)


def sm_split_series(spans: pd.DataFrame, *, sms_per_gpu: int,
                    comm_lanes: tuple[str, ...] = COMM_LANES) -> pd.DataFrame:
    """The SM split as a step function per rank.

    One row per change point. Columns: ``rank``; ``t_ns`` (ns, run clock; the values hold
    from ``t_ns`` until the rank's next row); ``comm_sms``, ``compute_sms`` (SMs, as in the
    module doc); ``compute_demand_sms`` (SMs, Σ over running compute kernels, uncapped);
    ``idle_sms`` (SMs, sms_per_gpu − comm_sms − compute_sms); ``duration_ns`` (ns, until the
    next row; 0 on a rank's last row, where no kernel runs).
    """
    r, t, dur, comm, comp, demand, _ = _sweep(spans, sms_per_gpu, comm_lanes)
    return pd.DataFrame({
        "rank": r, "t_ns": t, "comm_sms": comm, "compute_sms": comp,
        "compute_demand_sms": demand, "idle_sms": sms_per_gpu - comm - comp, "duration_ns": dur,
    })


def sm_seconds(spans: pd.DataFrame, *, sms_per_gpu: int,
               comm_lanes: tuple[str, ...] = COMM_LANES) -> pd.DataFrame:
    """SM-seconds held by communication and compute per rank (GPU).

    One row per rank with kernels that report ``sms``. Columns: ``rank``; ``window_ns`` (ns,
    first kernel start to last kernel end); ``comm_sm_s``, ``compute_sm_s``, ``idle_sm_s``
    (SM·s; idle = sms_per_gpu × window − comm − compute); ``comm_share``, ``compute_share``
    (of sms_per_gpu × window, 0..1); ``comm_sms_mean`` (SMs, mean over the time any
    communication kernel runs); ``comm_sms_max`` (SMs); ``comm_kernels``, ``compute_kernels``
    (count).
    """
    r, _, dur, comm, comp, _, (krank, ks, ke, kc) = _sweep(spans, sms_per_gpu, comm_lanes)
    ranks = np.unique(r)
    n = len(ranks)
    code = np.searchsorted(ranks, r)
    kcode = np.searchsorted(ranks, krank)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, kcode, ks)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, kcode, ke)
    window = last - first
    comm_sm_ns = np.bincount(code, comm * dur, minlength=n)
    comp_sm_ns = np.bincount(code, comp * dur, minlength=n)
    comm_time = np.bincount(code, np.where(comm > 0, dur, 0), minlength=n)
    comm_max = np.zeros(n, dtype=np.int64)
    np.maximum.at(comm_max, code, comm)
    total = sms_per_gpu * window.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        comm_share = np.where(total > 0, comm_sm_ns / total, np.nan)
        comp_share = np.where(total > 0, comp_sm_ns / total, np.nan)
        comm_mean = np.where(comm_time > 0, comm_sm_ns / comm_time, np.nan)
    return pd.DataFrame({
        "rank": ranks,
        "window_ns": window,
        "comm_sm_s": comm_sm_ns / 1e9,
        "compute_sm_s": comp_sm_ns / 1e9,
        "idle_sm_s": (total - comm_sm_ns - comp_sm_ns) / 1e9,
        "comm_share": comm_share,
        "compute_share": comp_share,
        "comm_sms_mean": comm_mean,
        "comm_sms_max": comm_max,
        "comm_kernels": np.bincount(kcode[kc], minlength=n).astype(np.int64),
        "compute_kernels": np.bincount(kcode[~kc], minlength=n).astype(np.int64),
    })
