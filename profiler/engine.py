"""Where the analyses run: in this process, or as Dask tasks over the same run files.

Per-rank analyses are independent, so a run is cut into *units* — whole nodes' worth of ranks
plus those nodes' counters, about ``ranks_per_task`` ranks each. Every unit is one task that
opens ``RunReader(path)`` itself and reads only its ranks and nodes (no frames travel to the
workers); the small per-unit results come back and :func:`~profiler.analysis.reduce_units`
joins them. ``engine="local"`` runs the units one after another in this process;
``engine="dask"`` submits them to a ``dask.distributed`` cluster — an existing scheduler
(``scheduler="tcp://host:8786"``) or a ``LocalCluster`` of ``workers`` processes. Both run
the same functions on the same units, so their results are identical. With ``align`` a first
pass collects the alignment events of every unit, the offsets are solved once, and the
second pass applies each rank's offset before analysing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .analysis.alignment import alignment_events, apply_offsets
from .analysis.params import AnalysisParams, natural_key, rank_node_map
from .analysis.summary import SPAN_COLUMNS_USED, analyze_unit, reduce_units, solve_offsets
from .dask_cluster import dask_client
from .errors import InputError
from .store import RunReader

__all__ = ["Unit", "plan_units", "analyze_run", "ENGINES"]

ENGINES = ("local", "dask")


@dataclass(frozen=True)
class Unit:
    """One task: whole ranks plus the counter streams of the nodes they run on."""

    ranks: tuple[int, ...]
    nodes: tuple[str, ...]


def plan_units(ranks: Sequence[int], nodes: Sequence[str], rank_nodes: Mapping[int, str],
               ranks_per_task: int = 64) -> list[Unit]:
    """Cut ranks into units of about ``ranks_per_task`` ranks that never split a node.
    Ranks with no known node are chunked by rank order; counter nodes that no rank maps to
    go to units of their own."""
    if ranks_per_task <= 0:
        raise InputError(f"ranks_per_task must be positive, got {ranks_per_task}")
    by_node: dict[str, list[int]] = {}
    loose: list[int] = []
    for r in sorted(ranks):  # loop over ranks, not events
        node = rank_nodes.get(r)
        if node is None:
            loose.append(r)
        else:
            by_node.setdefault(node, []).append(r)
    units: list[Unit] = []
    cur_r: list[int] = []
    cur_n: list[str] = []
    for node in sorted(by_node, key=natural_key):
        if cur_r and len(cur_r) + len(by_node[node]) > ranks_per_task:
            units.append(Unit(tuple(cur_r), tuple(cur_n)))
            cur_r, cur_n = [], []
        cur_r.extend(by_node[node])
        cur_n.append(node)
    if cur_r:
        units.append(Unit(tuple(cur_r), tuple(cur_n)))
    for i in range(0, len(loose), ranks_per_task):
        units.append(Unit(tuple(loose[i:i + ranks_per_task]), ()))
    spare = sorted(set(nodes) - set(by_node), key=natural_key)
    for i in range(0, len(spare), max(1, ranks_per_task // 8)):
        units.append(Unit((), tuple(spare[i:i + max(1, ranks_per_task // 8)])))
    return units


def _read(path: str, unit: Unit) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    reader = RunReader(path)
    spans = reader.spans(ranks=list(unit.ranks), columns=SPAN_COLUMNS_USED)
    counters = reader.counters(nodes=list(unit.nodes)) if unit.nodes else None
    return spans, counters


def unit_events(path: str, unit: Unit) -> dict[str, pd.DataFrame]:
    """Task: alignment events of one unit's ranks."""
    spans, _ = _read(path, unit)
    return alignment_events(spans)


def unit_analyses(path: str, unit: Unit, params: AnalysisParams, rank_nodes: Mapping[int, str],
                  offsets: Mapping[int, int] | None) -> dict[str, pd.DataFrame]:
    """Task: every per-rank analysis of one unit (offsets applied first when given)."""
    spans, counters = _read(path, unit)
    if offsets:
        spans = apply_offsets(spans, offsets)
    return analyze_unit(spans, counters, params=params, rank_nodes=rank_nodes)


Mapper = Callable[..., list[Any]]


def _local_map(fn: Callable[..., Any], units: Sequence[Unit], *args: Any) -> list[Any]:
    return [fn(args[0], u, *args[1:]) for u in units]


@contextlib.contextmanager
def _dask_map(scheduler: str | None, workers: int | None) -> Iterator[Mapper]:
    with dask_client(scheduler, workers) as (client, _owned):
        def run(fn: Callable[..., Any], units: Sequence[Unit], *args: Any) -> list[Any]:
            futures = [client.submit(fn, args[0], u, *args[1:], pure=False) for u in units]
            return list(client.gather(futures))

        yield run


def analyze_run(path: str | os.PathLike[str], *, ranks: Sequence[int] | None = None,
                align: bool = False, engine: str = "local", scheduler: str | None = None,
                workers: int | None = None, ranks_per_task: int = 64,
                params: AnalysisParams | None = None,
                **overrides: Any) -> dict[str, pd.DataFrame]:
    """Run every analysis on the run at ``path``; see
    :func:`profiler.analysis.run_analyses` for the tables. ``overrides`` replace manifest
    facts (e.g. ``sms_per_gpu``)."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if scheduler and engine != "dask":
        raise InputError("--scheduler needs --engine dask")
    path = os.fspath(path)
    reader = RunReader(path)
    p = params or AnalysisParams.from_manifest(reader.manifest, **overrides)
    present = reader.ranks()
    if ranks is not None:
        unknown = sorted(set(ranks) - set(present))
        if unknown:
            raise InputError(f"ranks {unknown[:8]} are not in {path} (it has ranks "
                             f"{present[0] if present else '-'}..{present[-1] if present else '-'})")
        present = sorted(set(ranks))
    if not present:
        raise InputError(f"{path}: the run has no span streams yet; nothing to analyse "
                         "(check the path, or wait for the writers' first flush)")
    nodes = reader.nodes()
    rank_nodes = rank_node_map(present, nodes, p)
    units = plan_units(present, nodes, rank_nodes, ranks_per_task)
    ctx = _dask_map(scheduler, workers) if engine == "dask" else contextlib.nullcontext(_local_map)
    with ctx as run:
        offsets = None
        per_rank: dict[int, int] | None = None
        if align:
            events = run(unit_events, [u for u in units if u.ranks], path)
            merged = {k: pd.concat([e[k] for e in events], ignore_index=True)
                      for k in ("collectives", "p2p")}
            offsets, per_rank = solve_offsets(merged, present, p)
        parts = run(unit_analyses, units, path, p, rank_nodes, per_rank)
    return reduce_units(parts, params=p, ranks=present, has_counters=bool(nodes),
                        has_node_map=bool(rank_nodes), offsets=offsets)
