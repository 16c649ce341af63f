"""Vectorised interval algebra over many groups at once.

Every function takes flat numpy arrays (one row per interval, a group code per row) and never
loops over intervals in Python: sort by (group, start), running maximum of ``end`` within the
group, a new merged block wherever a start lies beyond that running maximum. Intervals are
half-open ``[start, end)`` in int64 nanoseconds; touching intervals merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["group_codes", "sort_order", "union", "union_length", "gaps", "merged_gaps"]

_EMPTY = np.empty(0, dtype=np.int64)


def group_codes(df: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Dense int64 codes of ``df``'s rows by ``keys`` (sorted key order, nulls kept), and the
    key table whose row ``i`` holds the keys of code ``i``."""
    keys = list(keys)
    if len(df) == 0:
        return _EMPTY.copy(), pd.DataFrame({k: df[k].iloc[:0] for k in keys})
    grouped = df.groupby(keys, sort=True, dropna=False, observed=True)
    codes = grouped.ngroup().to_numpy(dtype=np.int64)
    table = grouped.size().reset_index()[keys]
    return codes, table


def sort_order(group: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Indices that sort rows by (group, start). One argsort of a combined int64 key
    (``group * span + start``) when it fits, 5-10x faster than ``np.lexsort``; ties in
    (group, start) come in no particular order."""
    if len(start) == 0:
        return _EMPTY.copy()
    g0, s0 = int(group.min()), int(start.min())
    span = int(start.max()) - s0 + 1
    if span * (int(group.max()) - g0 + 1) < 2**62:
        return np.argsort((group - g0) * span + (start - s0))
    return np.lexsort((start, group))


def union(
    group: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the intervals of each group. Returns ``(group, start, end)`` of disjoint merged
    intervals sorted by (group, start)."""
    group = np.asarray(group, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if len(start) == 0:
        return _EMPTY.copy(), _EMPTY.copy(), _EMPTY.copy()
    order = sort_order(group, start)
    g, s, e = group[order], start[order], end[order]
    running_end = pd.Series(e).groupby(g, sort=False).cummax().to_numpy()
    new = np.ones(len(s), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] > running_end[:-1])
    first = np.flatnonzero(new)
    return g[first], s[first], np.maximum.reduceat(e, first)


def union_length(
    group: np.ndarray, start: np.ndarray, end: np.ndarray, n_groups: int
) -> np.ndarray:
    """Length (ns) of the union of each group's intervals; int64 array of ``n_groups``."""
    g, s, e = union(group, start, end)
    return np.bincount(g, weights=e - s, minlength=n_groups).astype(np.int64)


def gaps(
    group: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The holes inside each group's union: ``(group, gap_start, gap_end)`` between the first
    start and the last end of the group (leading and trailing idle are not included)."""
    return merged_gaps(*union(group, start, end))


def merged_gaps(
    g: np.ndarray, s: np.ndarray, e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gaps` of intervals that :func:`union` already merged."""
    same = g[1:] == g[:-1]
    return g[1:][same], e[:-1][same], s[1:][same]


def bin_time_mean(start: np.ndarray, end: np.ndarray, weight: np.ndarray, row: np.ndarray,
                  n_rows: int, t0: int, dt: float, n_bins: int) -> np.ndarray:
    """Σ weight × overlap(span, bin) / dt per (row, bin) over ``n_bins`` bins of width ``dt``
    from ``t0``: the time-weighted mean of a value held over ``[start, end)`` in each bin, as
    an ``n_rows x n_bins`` array (the synthetic run bins its link counters with it, the dashboard its series)."""
    out = np.zeros((n_rows, n_bins + 2))
    s = np.clip((start - t0) / dt, 0, n_bins)
    e = np.clip((end - t0) / dt, 0, n_bins)
    b0, b1 = np.floor(s).astype(np.int64), np.floor(e).astype(np.int64)
    same = b0 == b1
    np.add.at(out, (row[same], b0[same]), weight[same] * (e[same] - s[same]))
    diff = ~same
    r, w = row[diff], weight[diff]
    np.add.at(out, (r, b0[diff]), w * (b0[diff] + 1 - s[diff]))
    np.add.at(out, (r, b1[diff]), w * (e[diff] - b1[diff]))
    # full bins in between: a difference array along the bins
    mid = np.zeros((n_rows, n_bins + 2))
    np.add.at(mid, (r, b0[diff] + 1), w)
    np.add.at(mid, (r, b1[diff]), -w)
    out += np.cumsum(mid, axis=1)
    return out[:, :n_bins]
