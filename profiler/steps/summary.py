"""Whole-run tables from step results: O(steps x ranks), never O(spans).

What the step-time chart, the KPIs and the straggler table of a long run read. Each calls the
analysis that defines its numbers on the per-step rows (:func:`~profiler.analysis.steps_table`
on the per-step bubble table, :func:`~profiler.analysis.stragglers` on the per-step op
medians), so a whole-run view and a per-step view cannot disagree on a definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..analysis.overlap import overlap_total
from ..analysis.params import AnalysisParams
from ..analysis.steps import steps_table
from ..analysis.stragglers import pool_steps, stragglers
from ..compare import fit_costs, ideal_ratios
from ..errors import InputError

__all__ = ["step_times", "run_stragglers", "run_ideal", "kpis", "RunningKpis"]


def step_times(bubbles: pd.DataFrame) -> pd.DataFrame:
    """The run's step-time series from the per-step bubble table: columns of
    :func:`~profiler.analysis.steps_table` (``step``, ``start_ns``, ``end_ns``,
    ``step_time_s``, ``bubble_ratio_mean``, ``bubble_ratio_max``)."""
    if len(bubbles) == 0:
        return steps_table(None)
    return steps_table(bubbles.drop(columns=[c for c in ("batch", "step_end_ns")
                                             if c in bubbles]))


def run_stragglers(ops: pd.DataFrame, *, params: AnalysisParams | None = None,
                   bubbles: pd.DataFrame | None = None,
                   layout: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Straggler scores over the whole run from the per-step op medians (``ops``): per
    (rank, kind, op) ``count`` (sum over steps), ``median_ns`` (median of the per-step
    medians: a rank slow in most steps is slow), ``mean_ns`` (count-weighted)
    (:func:`~profiler.analysis.stragglers.pool_steps`); then
    :func:`~profiler.analysis.stragglers` on the pooled rows, exactly as ``dualscope analyze``
    runs it. Returns its ``(op_scores, straggler_ranks)``."""
    p = params or AnalysisParams()
    peer = tuple(k for k in p.straggler_peer_keys if k != "step")
    parts = pool_steps(ops, peer)
    bub = None if bubbles is None else bubbles.drop(columns=[c for c in ("batch",
                                                    "step_end_ns") if c in bubbles])
    return stragglers(parts, threshold=p.straggler_threshold, peer_keys=peer,
                      bubble_table=bub, layout=layout)


def run_ideal(steps: pd.DataFrame, work: pd.DataFrame,
              ideal: pd.DataFrame) -> tuple[float | None, str]:
    """The whole run's ideal bubble ratio from step results, as ``dualscope compare`` defines
    it over the run: one cost fit over every step's actions (:func:`~profiler.compare.fit_costs`
    of the pooled ``work`` samples), the schedule simulated once with it, each rank-step row
    (``ideal``) taking its position's ratio, then the mean. Returns ``(ratio, how)``; ``how``
    says when it is instead the mean of the per-step ideals (each step fitted on its own):
    results written before the ``work`` table existed, units of different shapes, or the
    ``measured`` schedule (its op order is a step's own). None: no ideal at all."""
    if len(ideal) == 0 or "ideal_bubble_ratio" not in ideal:
        return None, "no ideal"
    per_step = float(ideal["ideal_bubble_ratio"].mean())
    shape_cols = ["schedule", "pp", "microbatches", "stages"]
    if len(work) == 0 or not set(shape_cols) <= set(steps.columns):
        return per_step, "mean of per-step ideals (no cost samples in these results)"
    shapes = steps.loc[steps["schedule"].astype(str) != "", shape_cols].drop_duplicates()
    if len(shapes) != 1 or str(shapes["schedule"].iloc[0]) == "measured":
        return per_step, ("mean of per-step ideals (the run's own op order)" if len(shapes) == 1
                          else "mean of per-step ideals (steps of different shapes)")
    name, pp, m, stages = shapes.iloc[0]
    try:
        ratios = ideal_ratios(str(name), int(pp), int(m), fit_costs(work, int(stages)))
    except InputError as e:  # ScheduleDeadlock too
        return per_step, f"mean of per-step ideals (pooled fit failed: {e})"
    pos = ideal["pp_rank"].to_numpy(dtype=np.int64)
    if pos.size == 0 or pos.max() >= len(ratios):
        return per_step, "mean of per-step ideals (positions outside the schedule)"
    return float(ratios[pos].mean()), "one fit over every step, as compare"


def kpis(tables: dict[str, pd.DataFrame], *,
         stragglers: pd.DataFrame | None = None) -> dict[str, Any]:
    """Headline numbers of a run from its step results (None where a table is missing):
    ``steps`` (run steps with results), ``newest_step``, ``step_time_s_median`` (s),
    ``bubble_ratio_mean`` (0..1, over ranks and steps), ``ideal_bubble_ratio_mean`` (0..1,
    :func:`run_ideal`: ``dualscope compare``'s whole-run number; ``ideal_how`` says how it
    was found), ``ideal_bubble_ratio_step_mean`` (0..1, the mean of each step's own ideal),
    ``overlap_ratio`` (overlapped / communication time, 0..1), ``exposed_comm_s`` (s, summed
    over ranks), ``comm_sm_share`` (SM-seconds of communication / of the GPUs' windows,
    0..1), ``straggler_ranks`` (:func:`run_stragglers`: the ranks ``dualscope analyze``
    flags over the run), ``straggler_ranks_any_step`` (ranks some step's own scores flag).
    ``stragglers``: the ranks table of :func:`run_stragglers` of these tables' ``ops``, when
    the caller has it already (with or without ``bubbles``: the ranks are the same)."""
    def get(name: str) -> pd.DataFrame:
        return tables.get(name, pd.DataFrame())

    bub, ov, sm, ideal, sc = (get(n) for n in ("bubbles", "overlap", "sm", "ideal", "scores"))
    times = step_times(bub)
    ideal_run, how = run_ideal(get("steps"), get("work"), ideal)
    ops = get("ops")
    strag = (stragglers if stragglers is not None else run_stragglers(ops)[1] if len(ops)
             else pd.DataFrame({"rank": []}))
    out: dict[str, Any] = {
        "steps": int(times["step"].nunique()) if len(times) else 0,
        "newest_step": int(times["step"].max()) if len(times) else None,
        "step_time_s_median": float(times["step_time_s"].median()) if len(times) else None,
        "bubble_ratio_mean": float(bub["bubble_ratio"].mean()) if len(bub) else None,
        "ideal_bubble_ratio_mean": ideal_run, "ideal_how": how,
        "ideal_bubble_ratio_step_mean": (float(ideal["ideal_bubble_ratio"].mean())
                                         if len(ideal) else None),
        "overlap_ratio": None, "exposed_comm_s": None, "comm_sm_share": None,
        "straggler_ranks": sorted(int(r) for r in strag["rank"].unique()),
        "straggler_ranks_any_step": sorted(int(r) for r in sc.loc[
            sc["straggler"].astype(bool), "rank"].unique()) if len(sc) else [],
    }
    if len(ov):
        share, _ = overlap_total(ov)
        out["overlap_ratio"] = share
        out["exposed_comm_s"] = float(ov["exposed_comm_ns"].sum()) / 1e9
    if len(sm) and "comm_sm_s" in sm:
        total = (sm["comm_sm_s"] + sm["compute_sm_s"] + sm["idle_sm_s"]).sum()
        out["comm_sm_share"] = float(sm["comm_sm_s"].sum() / total) if total else None
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in out.items()}


class RunningKpis:
    """:func:`kpis` and :func:`step_times` kept up to date from the new rows of each tick
    (``StepResults.update()``'s return): each update costs its new rows, whatever the run's
    length; :meth:`kpis` is O(1) and :meth:`step_times` O(steps). Gives the same numbers as
    :func:`kpis` and :func:`step_times` over every row so far."""

    def __init__(self) -> None:
        # the pooled whole-run numbers (run_ideal, run_stragglers) need their rows: medians
        # do not add up. Kept as the few columns they read; pooled again only after new rows.
        self._keep: dict[str, list[pd.DataFrame]] = {"work": [], "ops": [], "steps": [],
                                                     "ideal": []}
        self._pooled: tuple[float | None, str, list[int]] | None = None
        self._steps: dict[int, list[float]] = {}  # step -> [start, end, window, sum, n, max]
        self._sum = {k: 0.0 for k in ("bubble", "ideal", "comm", "comm_all", "overlapped", "exposed",
                                      "comm_sm", "all_sm")}
        self._n = {"bubble": 0, "ideal": 0, "sm": 0}
        self._stragglers: set[int] = set()

    _KEEP_COLUMNS = {"work": ["stage", "op", "dur_ns"],
                     "ops": ["rank", "kind", "op", "count", "median_ns", "mean_ns"],
                     "steps": ["schedule", "pp", "microbatches", "stages"],
                     "ideal": ["pp_rank", "ideal_bubble_ratio"]}

    def update(self, new: dict[str, pd.DataFrame]) -> None:
        for name, cols in self._KEEP_COLUMNS.items():
            df = new.get(name)
            if df is not None and len(df):
                self._keep[name].append(df[[c for c in cols if c in df]]
                                        if name != "ops" else df)
                self._pooled = None
        bub = new.get("bubbles")
        if bub is not None and len(bub):
            g = bub.groupby("step").agg(start=("window_start_ns", "min"),
                                        end=("window_end_ns", "max"),
                                        window=("window_ns", "max"),
                                        s=("bubble_ratio", "sum"), n=("bubble_ratio", "count"),
                                        mx=("bubble_ratio", "max"))
            for step, r in zip(g.index, g.itertuples(index=False), strict=True):
                cur = self._steps.get(int(step))
                if cur is None:
                    self._steps[int(step)] = [r.start, r.end, r.window, r.s, r.n, r.mx]
                else:
                    cur[0], cur[1] = min(cur[0], r.start), max(cur[1], r.end)
                    cur[2], cur[5] = max(cur[2], r.window), max(cur[5], r.mx)
                    cur[3] += r.s
                    cur[4] += r.n
            self._sum["bubble"] += float(bub["bubble_ratio"].sum())
            self._n["bubble"] += int(bub["bubble_ratio"].count())
        ideal = new.get("ideal")
        if ideal is not None and len(ideal):
            self._sum["ideal"] += float(ideal["ideal_bubble_ratio"].sum())
            self._n["ideal"] += int(ideal["ideal_bubble_ratio"].count())
        ov = new.get("overlap")
        if ov is not None and len(ov):
            both = ov.loc[ov["compute_ns"] > 0]  # overlap_total's rule: ranks with compute
            self._sum["comm"] += float(both["comm_ns"].sum())
            self._sum["overlapped"] += float(both["overlapped_ns"].sum())
            self._sum["comm_all"] += float(ov["comm_ns"].sum())
            self._sum["exposed"] += float(ov["exposed_comm_ns"].sum())
        sm = new.get("sm")
        if sm is not None and len(sm) and "comm_sm_s" in sm:
            self._sum["comm_sm"] += float(sm["comm_sm_s"].sum())
            self._sum["all_sm"] += float((sm["comm_sm_s"] + sm["compute_sm_s"]
                                          + sm["idle_sm_s"]).sum())
            self._n["sm"] += len(sm)
        sc = new.get("scores")
        if sc is not None and len(sc):
            self._stragglers.update(int(r) for r in sc.loc[sc["straggler"].astype(bool),
                                                          "rank"].unique())

    def _pool(self) -> tuple[float | None, str, list[int]]:
        if self._pooled is None:
            def rows(name: str) -> pd.DataFrame:
                parts = self._keep[name]
                if len(parts) > 1:
                    self._keep[name] = parts = [pd.concat(parts, ignore_index=True)]
                return parts[0] if parts else pd.DataFrame()

            ideal, how = run_ideal(rows("steps"), rows("work"), rows("ideal"))
            ops = rows("ops")
            strag = run_stragglers(ops)[1] if len(ops) else pd.DataFrame({"rank": []})
            self._pooled = (ideal, how, sorted(int(r) for r in strag["rank"].unique()))
        return self._pooled

    def step_times(self) -> pd.DataFrame:
        """As :func:`step_times` (means over every rank-step of the step)."""
        rows = [{"step": s, "start_ns": int(v[0]), "end_ns": int(v[1]),
                 "step_time_s": v[2] / 1e9, "bubble_ratio_mean": v[3] / v[4] if v[4] else
                 np.nan, "bubble_ratio_max": v[5]} for s, v in sorted(self._steps.items())]
        return pd.DataFrame(rows, columns=["step", "start_ns", "end_ns", "step_time_s",
                                           "bubble_ratio_mean", "bubble_ratio_max"])

    def kpis(self) -> dict[str, Any]:
        """As :func:`kpis` (the step-time median over the steps so far). The pooled numbers
        (``ideal_bubble_ratio_mean``, ``straggler_ranks``) are recomputed from the kept rows
        after an update brought new ones: O(rows kept), which grows with the run."""
        s, n = self._sum, self._n
        times = [v[2] / 1e9 for v in self._steps.values()]
        ideal, how, strag = self._pool()
        out: dict[str, Any] = {
            "steps": len(self._steps),
            "newest_step": max(self._steps) if self._steps else None,
            "step_time_s_median": float(np.median(times)) if times else None,
            "bubble_ratio_mean": s["bubble"] / n["bubble"] if n["bubble"] else None,
            "ideal_bubble_ratio_mean": ideal, "ideal_how": how,
            "ideal_bubble_ratio_step_mean": s["ideal"] / n["ideal"] if n["ideal"] else None,
            "overlap_ratio": s["overlapped"] / s["comm"] if s["comm"] else None,
            "exposed_comm_s": s["exposed"] / 1e9 if s["comm_all"] else None,
            "comm_sm_share": s["comm_sm"] / s["all_sm"] if s["all_sm"] else None,
            "straggler_ranks": strag,
            "straggler_ranks_any_step": sorted(self._stragglers),
        }
        return out
