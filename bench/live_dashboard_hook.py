"""The dashboard's live tick for ``bench/bench_live.py --hook bench.live_dashboard_hook:tick``.

Each tick does in this process what one browser on a live run makes the dashboard server do
once a second: the clock ticks; the header's freshness (``dashboard.status.status_outputs``);
then every page's callback body as its Dash callback runs it, with its own redraw key
(``render_if_changed``: a page whose data did not change is not drawn again; the Timeline's
key check; the Links page's incremental ``extendData`` path with its cursor), followed by
Dash's JSON serialisation of the outputs. The run is read through the app's own
``DataService`` (the live snapshot reads only what is new, ``profiler.store.tail``; step
results are followed from ``RUN/derived/steps``). Not included: HTTP and the browser's own
drawing. ``report()`` gives per page the first draw (ms) and the ticks' p50 / p95 in the first
and last minute, which ``bench_live.py`` adds to its JSON as ``dashboard``.

``$DUALSCOPE_BENCH_PAGES`` (comma-separated, default every page): the pages a tick draws --
one browser shows one page, so ``gpus`` alone is one operator on the cluster view; the
default is six browsers, one on each page. ``$DUALSCOPE_BENCH_SPAN_STEPS``: the live window of
held spans, in steps (``--live-span-steps``; 0: hold every span; default: the dashboard's).
``$DUALSCOPE_BENCH_TRACEMALLOC=N`` (a diagnosis, slow): trace Python allocations from
``$DUALSCOPE_BENCH_TRACEMALLOC_FROM_S`` (default 150 s, once the window is full) and report the N source lines whose held memory grew most by the last tick
(``report()["tracemalloc_growth"]``); Arrow's own pool is reported per minute either way
(``arrow_mb_by_minute``), since tracemalloc does not see it. ``$DUALSCOPE_BENCH_OBJECTS=1``
(cheap): the gc-tracked objects by type and the DataFrames' bytes at that time and at the
end (``report()["objects_growth"]``). ``$DUALSCOPE_BENCH_GC_GARBAGE=1`` (a
diagnosis): every 20 s from that time, what a full collection would free (cyclic garbage by
type, the bytes of arrays among it, the frames; ``report()["cyclic_garbage"]``). The
collector's pauses are reported per minute either way (``gc_by_minute``); the hook sets the
collector as the server does (:func:`dashboard.heap.settle`) unless
``$DUALSCOPE_BENCH_GC_DEFAULTS=1`` keeps CPython's defaults (to compare).
``$DUALSCOPE_BENCH_PROFILE_SNAPSHOT=FILE`` (a diagnosis):
``cProfile`` of the tick's snapshot read from ``$DUALSCOPE_BENCH_TRACEMALLOC_FROM_S`` on, its
stats written to FILE by ``report()`` (read with ``python -m pstats FILE``).
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from dash._utils import to_json
from dash.exceptions import PreventUpdate

from dashboard import ids
from dashboard.clock import next_clock
from dashboard.data import DataService
from dashboard.heap import settle
from dashboard.pages import gpus, links, overview, render_if_changed, sms, timeline
from dashboard.pages.timeline import render_key
from dashboard.refresh import CHILD_STATS
from dashboard.status import FreshnessTracker, status_outputs

PAGES = ("snapshot", "header", "gpus", "links", "sms", "timeline", "overview")
_S: dict[str, Any] = {"t0": time.time(), "totals": []}


def timed_ms(fn: Any) -> float:
    """ms to run a page's callback body and serialise its outputs as Dash does (a callback
    that raises PreventUpdate counts what it cost to decide that)."""
    t = time.perf_counter()
    try:
        out = fn()
        to_json(list(out) if isinstance(out, tuple) else out)
    except PreventUpdate:
        pass
    return (time.perf_counter() - t) * 1e3


def _time(page: str, fn: Any) -> None:
    apart = bool(CHILD_STATS["pid"])  # a refresh child computing as the page starts
    ms = timed_ms(fn)
    _S.setdefault("apart", []).append((page, apart, ms))
    now = time.time() - _S["t0"]
    _S["first"].setdefault(page, ms)
    _S["ticks"].append((now, page, ms))


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks`` hook: each collection's generation and pause (every thread's)."""
    if phase == "start":
        _S["gc_t"] = time.perf_counter()
    elif "gc_t" in _S:
        _S["gc"].append((time.time() - _S["t0"], info["generation"],
                         (time.perf_counter() - _S.pop("gc_t")) * 1e3))


def tick(run: Path, new: dict[str, Any]) -> None:
    if "gc" not in _S:  # the cyclic collector's pauses, per generation and minute
        _S["gc"] = []
        gc.callbacks.append(_on_gc)
    t_all = time.perf_counter()
    _tick(run)
    now = time.time() - _S["t0"]
    _S["totals"].append((now, (time.perf_counter() - t_all) * 1e3))
    _S.setdefault("arrow", []).append((now, pa.total_allocated_bytes() / 2**20))
    # every thread of the server and the refresh children it waited for
    _S.setdefault("cpu", []).append((now, time.process_time() + CHILD_STATS["cpu_s"]))
    _S["run"] = run.name
    age = _S["svc"].run(run.name).view_age_s()  # how old the data the pages drew is
    if age is not None:
        _S.setdefault("view_age", []).append((now, age))
    uss = _child_private_mb(int(CHILD_STATS["pid"]))
    if uss is not None:
        _S.setdefault("child_uss", []).append((now, uss))
    if now >= _TRACE_FROM_S:
        _diagnose(now)


def _child_private_mb(pid: int) -> float | None:
    """The private memory (MB: pages it has written, not those it still shares with the
    server) of the refresh child computing now, or None (none, or already gone)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kib = sum(int(line.split()[1]) for line in f
                      if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return None
    return kib / 1024


def _garbage_sample() -> None:
    """What the cyclic collector would free now: one full collection that keeps what it finds
    (``gc.DEBUG_SAVEALL``), summarised by type (with the bytes of arrays and frames among it),
    then freed by a plain collection."""
    import pandas as pd

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = list(gc.garbage)
    gc.garbage.clear()
    agg = _S.setdefault("garbage", {"samples": 0, "types": {}, "frames": {}, "array_mb": 0.0})
    agg["samples"] += 1
    for o in found:
        name = type(o).__qualname__
        agg["types"][name] = agg["types"].get(name, 0) + 1
        if isinstance(o, np.ndarray) and o.base is None:
            agg["array_mb"] += o.nbytes / 2**20
        elif isinstance(o, pd.DataFrame):
            key = f"{list(o.shape)} {[str(c) for c in o.columns[:3]]}"
            agg["frames"][key] = agg["frames"].get(key, 0) + 1
    del found
    gc.collect()


def _diagnose(now: float) -> None:
    """The opt-in diagnoses (module doc), from ``_TRACE_FROM_S`` on."""
    if os.environ.get("DUALSCOPE_BENCH_GC_GARBAGE") and now >= _S.get("garbage_at", 0.0):
        _garbage_sample()  # at most one a 20 s: it costs two full collections
        _S["garbage_at"] = now + 20
    if os.environ.get("DUALSCOPE_BENCH_OBJECTS"):
        _S.setdefault("objects_base", _objects())
    if os.environ.get("DUALSCOPE_BENCH_PROFILE_SNAPSHOT") and "profile" not in _S:
        import cProfile

        _S["profile"] = cProfile.Profile()
    if not int(os.environ.get("DUALSCOPE_BENCH_TRACEMALLOC") or 0):
        return
    if "trace_base" not in _S:
        tracemalloc.start(16)
        _S["trace_base"] = tracemalloc.take_snapshot()
    elif now >= _S.get("trace_at", 0.0):  # a snapshot costs seconds: at most one per 30 s
        _S["trace_last"] = tracemalloc.take_snapshot()
        _S["trace_at"] = now + 30


#: the first tracemalloc snapshot is taken this long into the run: once the live window is full
_TRACE_FROM_S = float(os.environ.get("DUALSCOPE_BENCH_TRACEMALLOC_FROM_S") or 150)


def _objects() -> dict[str, Any]:
    """Live Python objects by type (gc-tracked ones), and the DataFrames' own bytes."""
    from collections import Counter

    import pandas as pd

    gc.collect()
    objs = gc.get_objects()
    count = Counter(type(o).__qualname__ for o in objs)
    frames = [o for o in objs if isinstance(o, pd.DataFrame)]
    mb = sum(_frame_bytes(f) for f in frames) / 2**20
    return {"count": count, "frames_mb": mb, "frames": len(frames), "t": time.time() - _S["t0"],
            "frame_ids": {id(f) for f in frames}}


def _frame_bytes(f: Any) -> int:
    """A frame's own bytes; 0 for one the refresh thread is building as it is looked at (its
    columns and index of different lengths for a moment)."""
    try:
        return int(f.memory_usage(index=True, deep=False).sum())
    except ValueError:
        return 0


def _new_frames(base_ids: set[int], top: int = 8) -> list[dict[str, Any]]:
    """DataFrames alive at the end that were not at the base, grouped by shape and first
    columns, with the chain of what holds one of each group (referrer types, 3 levels)."""
    import pandas as pd

    groups: dict[tuple[Any, ...], list[Any]] = {}
    for o in gc.get_objects():
        if isinstance(o, pd.DataFrame) and id(o) not in base_ids:
            key = (tuple(o.shape), tuple(str(c) for c in o.columns[:4]))
            groups.setdefault(key, []).append(o)
    out = []
    for (shape, cols), fs in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        chain, obj = [], fs[0]
        for _ in range(3):
            # not the execution frames, nor this function's own lists (the group, and
            # gc.get_objects()'s list of everything: the only one this long)
            refs = [r for r in gc.get_referrers(obj) if type(r).__name__ != "frame"
                    and r is not fs and not (isinstance(r, list) and len(r) >= 10_000)]
            if not refs:
                break
            obj = refs[0]
            label = type(obj).__qualname__
            if isinstance(obj, dict):
                keys = [str(k)[:40] for k in list(obj)[:3]]
                label += f"{keys}"
            chain.append(label)
        out.append({"n": len(fs), "shape": list(shape), "columns": list(cols), "held_by": chain})
    return out


def _weakref_lists(top: int = 5) -> list[dict[str, Any]]:
    """pandas' copy-on-write reference lists (``BlockValuesRefs.referenced_blocks``) with
    the most weak references, and how many of them are dead."""
    out = []
    for o in gc.get_objects():
        if type(o).__name__ == "BlockValuesRefs":
            refs = getattr(o, "referenced_blocks", None) or []
            if len(refs) > 100:
                alive = [r() for r in refs if r() is not None]
                out.append({"refs": len(refs), "alive": len(alive),
                            "block": (type(alive[0]).__name__ + str(getattr(alive[0], "shape", "")))
                            if alive else None})
    out.sort(key=lambda d: -d["refs"])
    return out[:top]


def _objects_growth() -> dict[str, Any]:
    base = _S.get("objects_base")
    if base is None:
        return {}
    end = _objects()
    diff = end["count"].copy()
    diff.subtract(base["count"])
    return {"from_s": round(base["t"]), "to_s": round(end["t"]), "arrow_holders": _arrow_holders(),
            "frames": [base["frames"], end["frames"]],
            "frames_mb": [round(base["frames_mb"], 1), round(end["frames_mb"], 1)],
            "types_grown": [[k, v] for k, v in diff.most_common(20) if v > 0],
            "tracked_at_end": sum(end["count"].values()),
            "types_at_end": [[k, v] for k, v in end["count"].most_common(15)],
            "new_frames": _new_frames(base["frame_ids"]), "weakref_lists": _weakref_lists()}


def _arrow_holders(top: int = 10) -> list[dict[str, Any]]:
    """The live DataFrames holding the most Arrow memory: the bytes their Arrow-backed
    columns reference (whole buffers: a slice pins its parent's) against the bytes of the
    rows they show, their chunk count, and what refers to them."""
    import pandas as pd

    out = []
    for o in gc.get_objects():
        if not isinstance(o, pd.DataFrame):
            continue
        pinned = shown = chunks = 0
        for c in o.columns:
            arr = getattr(o[c].array, "_pa_array", None)
            if arr is None:
                continue
            pinned += arr.get_total_buffer_size()
            shown += arr.nbytes
            chunks += arr.num_chunks
        if pinned:
            refs = sorted({type(r).__qualname__ for r in gc.get_referrers(o)} - {"list"})[:4]
            out.append({"pinned_mb": round(pinned / 2**20, 2), "shown_mb": round(shown / 2**20, 2),
                        "chunks": chunks, "shape": list(o.shape),
                        "columns": [str(c) for c in o.columns[:5]], "referrers": refs})
    out.sort(key=lambda d: -d["pinned_mb"])
    return out[:top]


def _ours(f: Any) -> bool:
    return any(f"/{d}/" in f.filename for d in ("profiler", "dashboard", "bench"))


def _site(f: Any) -> str:
    return "/".join(f.filename.rsplit("/", 2)[-2:]) + f":{f.lineno}"


def _growth(top: int) -> list[dict[str, Any]]:
    """The ``top`` allocation sites whose held memory grew most between the two snapshots."""
    base, last = _S.get("trace_base"), _S.get("trace_last")
    if base is None or last is None:
        return []
    diff = last.compare_to(base, "traceback")
    return [{"kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff,
             "where": [_site(f) for f in d.traceback if _ours(f)][-5:]
             or [_site(f) for f in d.traceback][-3:]}
            for d in diff[:top]]


def _tick(run: Path) -> None:
    if not _S or "svc" not in _S:
        steps = os.environ.get("DUALSCOPE_BENCH_SPAN_STEPS")  # the live window; 0: none
        duty = os.environ.get("DUALSCOPE_BENCH_REFRESH_DUTY")  # the refresh thread's share
        # 0: the stale views computed on the refresh thread itself, not in a child process
        apart = os.environ.get("DUALSCOPE_BENCH_REFRESH_APART")
        made = DataService(str(run.parent), prometheus=None)  # the app's defaults
        if steps is not None:
            made.live_span_steps = int(steps) or None
        if duty is not None:
            made.refresh_duty = float(duty)
        if apart is not None:
            made.refresh_apart = apart != "0"
        _S.update(svc=made, tracker=FreshnessTracker(made), clock=None, last={}, cursor=None,
                  first={}, ticks=[])
        if not os.environ.get("DUALSCOPE_BENCH_GC_DEFAULTS"):  # as the server does it
            settle()
    svc: DataService = _S["svc"]
    prof = _S.get("profile")
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    rd, snap = svc.snapshot(run.name)  # the tick's read: what is new since the last
    if prof is not None:
        prof.disable()
    ms = (time.perf_counter() - t) * 1e3
    _S["first"].setdefault("snapshot", ms)
    _S["ticks"].append((time.time() - _S["t0"], "snapshot", ms))
    info = {"run": run.name, "live": snap.live, "t0_ns": snap.t0_ns,
            "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9}
    c = next_clock(_S["clock"], "open" if _S["clock"] is None else "tick", run_info=info)
    _S["clock"] = clock = c.to_store()
    last = _S["last"]

    def keyed(name: str, render: Any, *inputs: Any) -> Any:
        out = render_if_changed(svc, clock, last.get(name), render, *inputs)
        last[name] = out[-1]
        return out

    def tl() -> Any:
        key = render_key(svc, clock, "all", ["comm", "ideal"], None)
        if key is not None and key == last.get("timeline"):
            raise PreventUpdate
        last["timeline"] = key
        return timeline.render(svc, clock, None, "all", ["comm", "ideal"], None, ids.CLOCK, None)

    def lk() -> Any:
        out = links.render(svc, clock, _S.get("node"), "tx_bytes_per_s", _S["cursor"], ids.CLOCK)
        _S["cursor"] = out[-1]
        return out

    if "node" not in _S:
        nodes = sorted(snap.counters["node"].unique()) if len(snap.counters) else []
        _S["node"] = str(nodes[0]) if nodes else None
    want = set((os.environ.get("DUALSCOPE_BENCH_PAGES") or ",".join(PAGES)).split(","))
    pages = {"header": lambda: status_outputs(_S["tracker"], clock),
             "gpus": lambda: keyed("gpus", gpus.render, "pipeline", "bubble"),
             "links": lk, "sms": lambda: keyed("sms", sms.render, "all", None),
             "timeline": tl,
             "overview": lambda: keyed("overview", overview.render, None, None, None)}
    for name, fn in pages.items():
        if name in want or name == "header":  # every page has the header
            _time(name, fn)


def _minutes(end: float) -> range:
    return range(int(np.ceil(end / 60)))


def _in(xs: list[tuple[Any, ...]], minute: int) -> list[tuple[Any, ...]]:
    """The samples ``(t, ...)`` of ``xs`` taken in ``minute`` (t: s since the start)."""
    return [x for x in xs if minute * 60 <= x[0] < minute * 60 + 60]


def _pcts(v: list[float]) -> dict[str, float] | None:
    return {"p50": round(float(np.percentile(v, 50)), 1),
            "p95": round(float(np.percentile(v, 95)), 1)} if v else None


def _cpu_by_minute(end: float) -> list[float | None]:
    """The server's CPU per minute, in cores: its threads' CPU seconds (callbacks and the
    background refreshes of :meth:`dashboard.data.RunData.derived`) and those of the refresh
    children it waited for, over wall seconds. The tick times leave out what the background
    computes; this does not."""
    out: list[float | None] = []
    for m in _minutes(end):
        xs = _in(_S.get("cpu", []), m)
        out.append(round((xs[-1][1] - xs[0][1]) / (xs[-1][0] - xs[0][0]), 2)
                   if len(xs) > 1 and xs[-1][0] > xs[0][0] else None)
    return out


def _gc_by_minute(end: float) -> dict[str, list[Any]]:
    """Per generation of the cyclic collector: collections per minute, their pause in total
    and the longest (ms). A pause stops every thread, so a page's tick that meets one takes
    it on top of its own time."""
    out: dict[str, list[Any]] = {}
    for gen in (0, 1, 2):
        rows = []
        for m in _minutes(end):
            xs = [ms for _, g, ms in _in(_S.get("gc", []), m) if g == gen]
            rows.append({"n": len(xs), "total_ms": round(sum(xs), 1),
                         "max_ms": round(max(xs, default=0.0), 1)})
        out[str(gen)] = rows
    return out


def _refreshes() -> dict[str, Any]:
    """Per derived view (analyses, ideal, timeline index, ...) of the run: how often it was
    computed, its cost (s, p50 / max) and the interval between two computations (s, p50 /
    max): how old the value a page shows can be, at most about one interval."""
    svc = _S.get("svc")
    if svc is None or "run" not in _S:
        return {}
    rd = svc.run(_S["run"])
    by: dict[str, list[tuple[float, float, bool]]] = {}
    for name, at, cost, bg in list(rd.refreshes):
        by.setdefault(name, []).append((at, cost, bg))
    out: dict[str, Any] = {}
    for name, xs in sorted(by.items()):
        costs = [c for _, c, _ in xs]
        gaps = np.diff([a for a, _, _ in xs])
        out[name] = {"n": len(xs), "background": sum(bg for _, _, bg in xs),
                     "cost_s_p50": round(float(np.median(costs)), 2),
                     "cost_s_max": round(max(costs), 2),
                     "interval_s_p50": round(float(np.median(gaps)), 1) if len(gaps) else None,
                     "interval_s_max": round(float(gaps.max()), 1) if len(gaps) else None}
    return out


def report(minutes: float) -> dict[str, Any]:
    """Per page: the first draw and the p50 / p95 of the ticks in the first and last minute
    (ms); ``tick_ms`` the same for a whole dashboard tick (every page); the server's CPU per
    minute (``cpu_cores_by_minute``) and how often each derived view was computed
    (``refresh``), since a live run's stale views are computed in background threads."""
    if not _S.get("totals"):
        return {}
    end = minutes * 60
    out: dict[str, Any] = {"first_draw_ms": {k: round(v, 1) for k, v in _S["first"].items()}}
    per: dict[str, Any] = {}
    for page in PAGES:
        xs = [(t, ms) for t, p, ms in _S["ticks"] if p == page]
        per[page] = {"first": _pcts([ms for t, ms in xs if t < 60]),
                     "last": _pcts([ms for t, ms in xs if t >= end - 60])}
    out["pages_ms"] = per
    # the curve: each page's p50 per minute of the run (ms)
    out["pages_p50_by_minute"] = {
        page: [(_pcts(v) or {}).get("p50") for v in
               ([ms for _, p, ms in _in(_S["ticks"], m) if p == page] for m in _minutes(end))]
        for page in PAGES}
    out["arrow_mb_by_minute"] = [
        round(max((mb for _, mb in _in(_S.get("arrow", []), m)), default=float("nan")), 1)
        for m in _minutes(end)]
    out["cpu_cores_by_minute"] = _cpu_by_minute(end)
    # the refresh children (dashboard.refresh.compute_apart): how many, CPU, largest peak RSS
    out["refresh_children"] = {"n": int(CHILD_STATS["n"]), "lost": int(CHILD_STATS["lost"]),
                               # the server's side: forks and unpickling, GIL held (s / MB)
                               **{k: round(CHILD_STATS[k], 3) for k in (
                                   "fork_s", "fork_s_max", "loads_s", "loads_s_max")},
                               "mb": round(CHILD_STATS["bytes"] / 2**20, 1),
                               "mb_max": round(CHILD_STATS["bytes_max"] / 2**20, 1),
                               "cpu_s": round(CHILD_STATS["cpu_s"], 1),
                               "max_rss_mb": round(CHILD_STATS["max_rss_kib"] / 1024, 1),
                               # its own pages, sampled at the ticks while one computed
                               "private_mb_max": round(max(
                                   (mb for _, mb in _S.get("child_uss", [])), default=0.0), 1),
                               "private_mb_by_minute": [round(max(
                                   (mb for _, mb in _in(_S.get("child_uss", []), m)),
                                   default=0.0), 1) for m in _minutes(end)]}
    out["gc_by_minute"] = _gc_by_minute(end)
    out["refresh"] = _refreshes()
    # how old the snapshot the pages drew from was after each tick (s): a big live run is read
    # behind the pages' backs (RunData.snapshot), so a cheap tick may show older data
    out["view_age_s_by_minute"] = [
        {**(_pcts([a for _, a in _in(_S.get("view_age", []), m)]) or {}),
         "max": round(max((a for _, a in _in(_S.get("view_age", []), m)), default=0.0), 1)}
        for m in _minutes(end)]
    # each page's p50 / p95 over the run while a refresh child computed and while none did
    out["pages_ms_child_or_not"] = {
        page: {k: _pcts([ms for p, a, ms in _S.get("apart", []) if p == page and a == v])
               for k, v in (("child", True), ("none", False))} for page in PAGES}
    top = int(os.environ.get("DUALSCOPE_BENCH_TRACEMALLOC") or 0)
    if top:
        out["tracemalloc_growth"] = _growth(top)
    if os.environ.get("DUALSCOPE_BENCH_OBJECTS"):
        out["objects_growth"] = _objects_growth()
    if "garbage" in _S:
        g = _S["garbage"]
        out["cyclic_garbage"] = {
            "samples": g["samples"], "array_mb": round(g["array_mb"], 1),
            "types": sorted(g["types"].items(), key=lambda kv: -kv[1])[:15],
            "frames": sorted(g["frames"].items(), key=lambda kv: -kv[1])[:10]}
    if _S.get("profile") is not None:
        _S["profile"].dump_stats(os.environ["DUALSCOPE_BENCH_PROFILE_SNAPSHOT"])
    tot = _S["totals"]
    out["tick_ms"] = {"first": _pcts([ms for t, ms in tot if t < 60]),
                      "last": _pcts([ms for t, ms in tot if t >= end - 60])}
    return out
