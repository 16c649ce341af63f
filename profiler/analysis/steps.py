"""Step times of a run, from the bubble table (one step window per pipeline, DESIGN.md).

A step of the run starts when the first of its pipelines starts computing and ends when the
last one stops; its time is the slowest pipeline's window, the makespan a training loop waits
for. No other definition of a step window exists: this reads :func:`~.bubbles.bubbles`.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["STEP_COLUMNS", "steps_table"]

STEP_COLUMNS = ["step", "start_ns", "end_ns", "step_time_s", "bubble_ratio_mean",
                "bubble_ratio_max"]


def steps_table(bubble_table: pd.DataFrame | None) -> pd.DataFrame:
    """One row per step of a bubble table (:func:`~.bubbles.bubbles`; None or empty: no rows).

    Columns: ``step`` (-1: unknown, the whole run); ``start_ns``, ``end_ns`` (ns, run clock:
    the earliest pipeline window start and the latest window end); ``step_time_s`` (s, the
    slowest pipeline's window); ``bubble_ratio_mean``, ``bubble_ratio_max`` (0..1, over the
    ranks of every pipeline). Sorted by step.
    """
    if bubble_table is None or len(bubble_table) == 0:
        return pd.DataFrame({c: [] for c in STEP_COLUMNS})
    g = bubble_table.groupby("step", sort=True)
    out = g.agg(start_ns=("window_start_ns", "min"), end_ns=("window_end_ns", "max"),
                window_ns=("window_ns", "max"), bubble_ratio_mean=("bubble_ratio", "mean"),
                bubble_ratio_max=("bubble_ratio", "max")).reset_index()
    out["step_time_s"] = out["window_ns"] / 1e9
    return out[STEP_COLUMNS]
