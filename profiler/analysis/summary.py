"""Run every analysis: a per-rank-group map and a small cross-rank reduce.

:func:`analyze_unit` is the map: it takes the spans of a set of whole ranks (and the counters
of their nodes) and returns per-rank results and partial results; it never needs another
rank's data. :func:`reduce_units` joins the maps: step windows and bubbles, straggler
z-scores, bandwidth phase summary. :func:`run_analyses` runs both on frames already in memory;
for a run directory :func:`profiler.engine.analyze_run` reads the files and runs the same map
and reduce (locally or on Dask). This module does no I/O and never imports the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .alignment import alignment_events, apply_offsets, clock_offsets
from .bandwidth import bandwidth_by_phase, link_bandwidth, phase_summary
from .bubbles import bubble_parts, bubbles_by_stage, busy_intervals, combine_bubbles
from .overlap import overlap
from .params import AnalysisParams, assign_steps, pipeline_layout, rank_node_map
from .sm_split import sm_seconds, sm_split_series
from .stragglers import op_duration_parts, pool_steps, stragglers

__all__ = ["Frames", "SPAN_COLUMNS_USED", "analyze_unit", "reduce_units", "run_analyses",
           "solve_offsets"]

#: span columns the analyses read (the engine reads only these)
SPAN_COLUMNS_USED = ["rank", "lane", "kind", "name", "step", "stage", "microbatch", "op",
                     "start_ns", "end_ns", "sms", "pg", "annotation"]

#: result tables and the keys they are sorted by after the reduce
_SORT = {
    "overlap": ["rank"],
    "sm_seconds": ["rank"],
    "sm_series": ["rank", "t_ns"],
    "link_bandwidth": ["node", "gpu", "device", "metric"],
    "bandwidth_by_phase": ["node", "gpu", "device", "metric", "phase"],
}


@dataclass
class Frames:
    """Spans and counters already in memory, with the parameters of their run."""

    spans: pd.DataFrame
    counters: pd.DataFrame | None = None
    params: AnalysisParams | None = None


def analyze_unit(spans: pd.DataFrame, counters: pd.DataFrame | None, *,
                 params: AnalysisParams, rank_nodes: Mapping[int, str]) -> dict[str, pd.DataFrame]:
    """The map step over whole ranks (and the counters of the nodes they run on)."""
    steps = assign_steps(spans)
    # straggler medians are per step (analysis.stragglers), spans in no step left out; a rank
    # with no step at all (a trace without step annotations) is one group
    in_step = steps >= 0
    rank = spans["rank"].to_numpy()
    in_step |= ~np.isin(rank, np.unique(rank[in_step]))
    out = {
        "bubble_parts": bubble_parts(spans, steps),
        "busy": busy_intervals(spans),
        "overlap": overlap(spans),
        "op_parts": op_duration_parts(spans.loc[in_step].assign(step=steps[in_step]),
                                      peer_keys=("step", *params.straggler_peer_keys)),
    }
    if params.sms_per_gpu:
        out["sm_seconds"] = sm_seconds(spans, sms_per_gpu=params.sms_per_gpu)
        if params.sm_series:
            out["sm_series"] = sm_split_series(spans, sms_per_gpu=params.sms_per_gpu)
    if counters is not None and len(counters):
        out["link_bandwidth"] = link_bandwidth(counters, params=params)
        out["bandwidth_by_phase"] = bandwidth_by_phase(counters, spans, params=params,
                                                       rank_nodes=rank_nodes)
    return out


def _concat(parts: Sequence[Mapping[str, pd.DataFrame]], key: str) -> pd.DataFrame | None:
    frames = [p[key] for p in parts if key in p]
    if not frames:
        return None
    non_empty = [f for f in frames if len(f)]
    df = pd.concat(non_empty, ignore_index=True) if non_empty else frames[0]
    if key in _SORT:
        df = df.sort_values(_SORT[key], kind="stable").reset_index(drop=True)
    return df


def reduce_units(parts: Sequence[Mapping[str, pd.DataFrame]], *, params: AnalysisParams,
                 ranks: Sequence[int], has_counters: bool, has_node_map: bool,
                 offsets: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Join the maps of all rank groups into the result tables (see :func:`run_analyses`)."""
    bparts = _concat(parts, "bubble_parts")
    assert bparts is not None
    position = bparts.groupby("rank")["position_stage"].min() if len(bparts) else None
    layout = pipeline_layout(ranks, params, position)
    result: dict[str, pd.DataFrame] = {}
    status: list[dict[str, Any]] = []

    def put(name: str, df: pd.DataFrame | None, reason: str = "") -> None:
        if df is not None:
            result[name] = df
        status.append({"analysis": name, "available": df is not None,
                       "rows": 0 if df is None else len(df), "reason": reason})

    busy = _concat(parts, "busy")
    assert busy is not None
    table = combine_bubbles(bparts.sort_values(["rank", "step"]).reset_index(drop=True), layout,
                            busy)
    put("bubbles", table, "" if len(table) else "no compute-lane spans")
    put("bubbles_by_stage", bubbles_by_stage(table))
    put("overlap", _concat(parts, "overlap"))
    sms_reason = "" if params.sms_per_gpu else (
        "topology.sms_per_gpu unknown: record it in the manifest or pass --sms-per-gpu")
    put("sm_seconds", _concat(parts, "sm_seconds"), sms_reason)
    if params.sm_series:
        put("sm_series", _concat(parts, "sm_series"), sms_reason)
    no_counters = "" if has_counters else "the run has no counters"
    put("link_bandwidth", _concat(parts, "link_bandwidth"), no_counters)
    by_phase = _concat(parts, "bandwidth_by_phase")
    phase_reason = no_counters or ("" if has_node_map else
                                   "rank-to-node mapping unknown: set topology.gpus_per_node "
                                   "or extra.rank_nodes in the manifest; every sample is 'none'")
    put("bandwidth_by_phase", by_phase, phase_reason)
    put("bandwidth_phase_summary", None if by_phase is None else phase_summary(by_phase),
        phase_reason)
    ops = _concat(parts, "op_parts")
    assert ops is not None
    ops = pool_steps(ops, params.straggler_peer_keys)
    scores, strag = stragglers(ops, threshold=params.straggler_threshold,
                               peer_keys=params.straggler_peer_keys, bubble_table=table,
                               layout=layout)
    put("op_scores", scores)
    put("stragglers", strag)
    if offsets is not None:
        put("clock_offsets", offsets)
    result["layout"] = layout
    result["status"] = pd.DataFrame(status)
    return result


def solve_offsets(events: Mapping[str, pd.DataFrame], ranks: Sequence[int],
                  params: AnalysisParams) -> tuple[pd.DataFrame, dict[int, int]]:
    """Clock offsets from the alignment events of all ranks (see
    :func:`~profiler.analysis.alignment.clock_offsets`): the table, and ``rank -> offset_ns``
    for the ranks whose offset is known. The one align step of the local and Dask paths."""
    offsets = clock_offsets(events, layout=pipeline_layout(ranks, params))
    known = offsets.dropna(subset=["offset_ns"])
    per_rank = dict(zip(known["rank"].astype(int), known["offset_ns"].astype(int), strict=True))
    return offsets, per_rank


def run_analyses(source: Frames, *, ranks: Sequence[int] | None = None,
                 align: bool = False) -> dict[str, pd.DataFrame]:
    """Run every analysis on frames in memory and return ``{name: DataFrame}`` (for a run
    directory use :func:`profiler.engine.analyze_run`, which returns the same tables).

    ``align`` estimates clock offsets and applies them before the other analyses. Tables:
    ``bubbles``, ``bubbles_by_stage``, ``overlap``, ``sm_seconds`` (``sm_series`` when
    ``params.sm_series``), ``link_bandwidth``, ``bandwidth_by_phase``,
    ``bandwidth_phase_summary``, ``op_scores``, ``stragglers``, ``clock_offsets`` (with
    ``align``), ``layout`` (rank, pipeline, pp_rank) and ``status`` (``analysis``,
    ``available``, ``rows``, ``reason``: why a table is missing or empty). Each table's
    columns and units are documented on the function that makes it.
    """
    if not isinstance(source, Frames):
        raise TypeError(f"run_analyses takes Frames, got {type(source).__name__}; for a run "
                        "directory use profiler.engine.analyze_run")
    p = source.params or AnalysisParams()
    spans = source.spans
    if ranks is not None:
        spans = spans.loc[spans["rank"].isin(list(ranks))]
    counters = source.counters
    all_ranks = sorted(int(r) for r in spans["rank"].unique())
    nodes = [] if counters is None else sorted(counters["node"].unique())
    rank_nodes = rank_node_map(all_ranks, nodes, p)
    offsets = None
    if align:
        offsets, per_rank = solve_offsets(alignment_events(spans), all_ranks, p)
        spans = apply_offsets(spans, per_rank)
    part = analyze_unit(spans, counters, params=p, rank_nodes=rank_nodes)
    return reduce_units([part], params=p, ranks=all_ranks,
                        has_counters=counters is not None and len(counters) > 0,
                        has_node_map=bool(rank_nodes), offsets=offsets)
