"""What a view reads from a run: a :class:`Snapshot` of everything read so far, and the
cutoff (replay's virtual time) up to which it is shown. Plain data, no Dash, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.manifest import Manifest

__all__ = ["Snapshot", "time_bounds", "clip_to_cutoff", "quantize_cutoff"]


@dataclass(frozen=True)
class Snapshot:
    """Everything read from a run so far (``version`` changes when it grows)."""

    run_id: str
    manifest: Manifest
    spans: pd.DataFrame
    counters: pd.DataFrame
    version: int
    t0_ns: int
    t1_ns: int
    #: a live run whose spans are held for a window of steps: (first, newest) step held; the
    #: whole-run views read its step results (None: every span read so far is here)
    window_steps: tuple[int, int] | None = None

    @property
    def live(self) -> bool:
        return self.manifest.status == "live"


def time_bounds(spans: pd.DataFrame, counters: pd.DataFrame) -> tuple[int, int]:
    """First and last time (ns) of any span or counter sample; (0, 0) for an empty run."""
    lo, hi = [], []
    if len(spans):
        lo.append(int(spans["start_ns"].min()))
        hi.append(int(spans["end_ns"].max()))
    if len(counters):
        lo.append(int(counters["ts_ns"].min()))
        hi.append(int(counters["ts_ns"].max()))
    return (min(lo), max(hi)) if lo else (0, 0)


def clip_to_cutoff(spans: pd.DataFrame, counters: pd.DataFrame,
                   cutoff_ns: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a reader would have seen at ``cutoff_ns``: spans that started before it (ends
    clipped to it) and counter samples taken at or before it. ``None``: everything."""
    if cutoff_ns is None:
        return spans, counters
    s = spans.loc[spans["start_ns"].to_numpy() < cutoff_ns]
    if len(s) and (s["end_ns"].to_numpy() > cutoff_ns).any():
        s = s.assign(end_ns=np.minimum(s["end_ns"].to_numpy(), cutoff_ns))
    c = counters.loc[counters["ts_ns"].to_numpy() <= cutoff_ns]
    return s, c


def quantize_cutoff(cutoff_ns: int | None, snap: Snapshot) -> int | None:
    """Replay cutoffs rounded to 1/400 of the run, so a playing replay reuses analyses."""
    if cutoff_ns is None:
        return None
    if cutoff_ns >= snap.t1_ns:
        return None
    q = max(1, (snap.t1_ns - snap.t0_ns) // 400)
    return int(snap.t0_ns + ((cutoff_ns - snap.t0_ns) // q + 1) * q)
