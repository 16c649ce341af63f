"""Communication / compute overlap per rank (DESIGN.md: share of communication time during
which compute runs on the same device; one rank drives one device).

Communication time is the union of the rank's spans on the communication lanes (``comm`` and
``pp_comm`` by default); compute time is the union of its compute-lane spans. When a rank
recorded compute kernels (``kind == "kernel"``) only those count as compute, so a host-timed
pipeline action that also covers its own dispatch/combine does not hide exposed
communication. Overlap = |comm ∪-set ∩ compute ∪-set|, computed as
|comm| + |compute| - |comm ∪ compute| with the vectorised union.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import union_length
from .params import COMM_LANES

__all__ = ["overlap", "overlap_total", "device_compute_mask"]


def device_compute_mask(spans: pd.DataFrame) -> np.ndarray:
    """Rows that count as device compute: compute-lane spans, restricted to kernels on ranks
    that recorded any compute kernel."""
    comp = (spans["lane"] == "compute").to_numpy()
    kernel = comp & (spans["kind"] == "kernel").to_numpy()
    ranks = spans["rank"].to_numpy()
    has_kernels = np.isin(ranks, np.unique(ranks[kernel]))
    return np.where(has_kernels, kernel, comp)


def overlap(spans: pd.DataFrame, *, comm_lanes: tuple[str, ...] = COMM_LANES) -> pd.DataFrame:
    """Overlap of communication with compute per rank.

    One row per rank with any compute or communication span. Columns: ``rank``;
    ``comm_ns`` (ns, union of communication spans); ``compute_ns`` (ns, union of compute
    spans); ``overlapped_ns`` (ns, communication time during which compute runs);
    ``exposed_comm_ns`` (ns, communication time with no compute running);
    ``overlap_ratio`` (overlapped / comm, 0..1; NaN when it does not exist: the rank has no
    communication, or no compute on its device, which is "no data", not "all exposed");
    ``comm_spans`` (count); ``note`` (why the ratio is NaN, else empty). Figures over many
    ranks (:func:`overlap_total`) leave out the ranks without compute.
    """
    comm = spans["lane"].isin(list(comm_lanes)).to_numpy()
    comp = device_compute_mask(spans)
    ranks_all = spans["rank"].to_numpy(dtype=np.int64)
    keep = comm | comp
    ranks = np.unique(ranks_all[keep])
    n = len(ranks)
    code = np.searchsorted(ranks, ranks_all)
    s = spans["start_ns"].to_numpy(dtype=np.int64)
    e = spans["end_ns"].to_numpy(dtype=np.int64)

    comm_ns = union_length(code[comm], s[comm], e[comm], n)
    comp_ns = union_length(code[comp], s[comp], e[comp], n)
    both_ns = union_length(code[keep], s[keep], e[keep], n)
    overlapped = comm_ns + comp_ns - both_ns
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((comm_ns > 0) & (comp_ns > 0), overlapped / np.maximum(comm_ns, 1),
                         np.nan)
    note = np.where(comm_ns == 0, "no communication on this rank",
                    np.where(comp_ns == 0, "no compute on this device", ""))
    return pd.DataFrame({
        "rank": ranks,
        "comm_ns": comm_ns,
        "compute_ns": comp_ns,
        "overlapped_ns": overlapped,
        "exposed_comm_ns": comm_ns - overlapped,
        "overlap_ratio": ratio,
        "comm_spans": np.bincount(code[comm], minlength=n).astype(np.int64),
        "note": note.astype(object),
    })


def overlap_total(table: pd.DataFrame) -> tuple[float, str]:
    """Overlapped share of the communication of the ranks in ``table`` (an :func:`overlap`
    table) that have compute; NaN and the reason when no rank has both."""
    both = table.loc[(table["comm_ns"] > 0) & (table["compute_ns"] > 0)]
    if len(both):
        return float(both["overlapped_ns"].sum() / both["comm_ns"].sum()), ""
    if len(table) and (table["comm_ns"] > 0).any():
        return float("nan"), "no compute on any device with communication"
    return float("nan"), "no communication"
