"""Live mode at cluster scale (issue 10): what one live tick costs as a long run grows.

A simulated job of ``--ranks`` ranks on ranks/8 nodes, written without spending CPU on writing
during the measurement:

1. **Pre-generation** (not timed): per rank, the spans of one step of the bundled reference run
   (``sample_traces/reference-cpu-pp2-ep2-dualpipev``: DualPipeV PP 2 x EP 2, pipeline actions,
   EP all-to-alls, PP send/recv, host work; rank r plays the reference rank at its pipeline
   position), stretched to ``--step-s`` and repeated for every step; per node, counters at
   ``--counter-hz`` per GPU (NVLink tx/rx per GPU and per each of 18 links, IB tx/rx per each
   of 8 HCA ports). Each stream is encoded once into real segments (Arrow IPC, LZ4, a checksum
   record per flush, sealed every ``--rotate-s``) in a staging folder.
2. **Feeder** (a separate process): moves the staged bytes into the run directory on the
   job's clock, as the writers would: each flush appends its bytes and then its checksum
   record to the open segment; each rotation renames it sealed; every rank's heartbeat is
   rewritten every second.
3. **Step engine** (a separate process, as a run's one engine is: the launcher of a
   reference run, or the dashboard server's worker): ``StepEngine.update`` every ``--tick-s``
   (cursor read of what is new, per-step results of the steps that became complete, appended
   to ``RUN/derived/steps``); its update times and how far its results lag the job are
   reported as ``engine``.
4. **Ticks** (this process, every ``--tick-s``): the live tick of a reader -- the new step
   results since its cursor (:class:`~profiler.steps.StepResults`), the run's KPIs and
   step-time series kept up from them (:class:`~profiler.steps.RunningKpis`) and the
   freshness verdict of every source -- then the dashboard's tick through ``--hook``
   (``module:function``, called as ``function(run_dir, new_results)``; the dashboard adds its
   server's callbacks there and reports ``first_draw_ms`` per page;
   ``--hook live_dashboard_hook:tick`` is the dashboard's, ``bench/live_dashboard_hook.py``).

Prints JSON: ``ranks``, ``minutes``, ``tick_p50_ms`` / ``tick_p95_ms`` at the first and last
minute, ``rss_mb`` first / last (this process), and the engine's figures::

    .venv/bin/python bench/bench_live.py --ranks 256 --minutes 3 --json
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler.freshness import FreshnessPolicy, Observer  # noqa: E402
from profiler.manifest import Manifest  # noqa: E402
from profiler.schema import COUNTER_SCHEMA, SPAN_SCHEMA  # noqa: E402
from profiler.steps import RunningKpis, StepEngine, StepResults  # noqa: E402
from profiler.store import RunReader  # noqa: E402
from profiler.store.integrity import ChecksumSink  # noqa: E402
from profiler.store.segments import IPC_OPTIONS  # noqa: E402

TEMPLATE = ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"
LINKS, PORTS, GPUS = 18, 8, 8
_REC = 16


# -- pre-generation -------------------------------------------------------------------------


def _template() -> tuple[dict[int, pa.Table], int]:
    """One step of each reference rank, times relative to the step's start, and the step's
    period (first start of this step to the first start of the next, ns)."""
    r = RunReader(TEMPLATE)
    t = r.span_table()
    step = t.column("step").to_numpy(zero_copy_only=False)
    start = t.column("start_ns").to_numpy()
    s3 = start[step == 3].min()
    # every rank's step must end before its next one begins, as in a training loop
    period = int((t.column("end_ns").to_numpy()[step == 3].max() - s3) * 1.02)
    out = {}
    for rank in range(4):
        m = (step == 3) & (t.column("rank").to_numpy() == rank)
        sub = t.filter(pa.array(m))
        sub = sub.set_column(sub.schema.get_field_index("start_ns"), "start_ns",
                             pc.subtract(sub.column("start_ns"), s3))
        sub = sub.set_column(sub.schema.get_field_index("end_ns"), "end_ns",
                             pc.subtract(sub.column("end_ns"), s3))
        out[rank] = sub
    return out, period


class _SegWriter:
    """A staged stream: real segments, one record batch and checksum record per flush; the
    schedule says when (job seconds) each record becomes due."""

    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self.dir, self.schema = directory, schema
        directory.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self.sink: ChecksumSink | None = None
        self.writer: Any = None
        self.events: list[tuple[float, int, int]] = []  # (due_s, seq, record index)
        self.records = 0

    def flush(self, table: pa.Table, due_s: float) -> None:
        if table.num_rows == 0:
            return
        if self.writer is None:
            data = open(self.dir / f"seg-{self.seq:06d}.arrows", "wb")  # noqa: SIM115
            side = open(self.dir / f"seg-{self.seq:06d}.crc", "wb")  # noqa: SIM115
            self.sink = ChecksumSink(data, side)
            self.writer = ipc.new_stream(self.sink, self.schema, options=IPC_OPTIONS)
            self.records = 0
        self.writer.write_table(table)
        assert self.sink is not None
        self.sink.record(False)
        self.events.append((due_s, self.seq, self.records))
        self.records += 1

    def seal(self, due_s: float) -> None:
        if self.writer is None:
            return
        self.writer.close()
        assert self.sink is not None
        self.sink.record(False)
        self.sink.close_files()
        self.events.append((due_s, self.seq, -1 - self.records))  # negative: the sealing
        self.writer = self.sink = None
        self.seq += 1


def _gen_ranks(args: tuple[Path, list[int], int, float, int, float, float]) -> dict[str, Any]:
    stage, ranks, world, step_s, steps, flush_s, rotate_s = args
    tmpl, period = _template()
    scale = step_s * 1e9 / period
    half = world // 2  # PP 2: pipeline = rank % half, position = rank // half
    out = {}
    for rank in ranks:
        tr = (rank // half) * 2 + (rank % half) % 2
        base = tmpl[tr]
        n = base.num_rows
        s0 = (base.column("start_ns").to_numpy() * scale).astype(np.int64)
        e0 = (base.column("end_ns").to_numpy() * scale).astype(np.int64)
        reps = np.repeat(np.arange(steps, dtype=np.int64), n)
        off = reps * int(step_s * 1e9)
        big = pa.concat_tables([base] * steps)
        cols = {f.name: big.column(f.name) for f in SPAN_SCHEMA}
        cols["rank"] = pa.array(np.full(n * steps, rank, np.int32))
        cols["start_ns"] = pa.array(np.tile(s0, steps) + off)
        cols["end_ns"] = pa.array(np.tile(e0, steps) + off)
        cols["step"] = pa.array(reps.astype(np.int32))
        names = np.array(big.column("name").to_pylist(), dtype=object)
        marks = names == "ProfilerStep#3"  # the step mark names its own step
        names[marks] = [f"ProfilerStep#{k}" for k in reps[marks]]
        cols["name"] = pa.array(names, pa.string())
        t = pa.table(cols, schema=SPAN_SCHEMA)
        order = np.argsort(t.column("end_ns").to_numpy(), kind="stable")
        t = t.take(pa.array(order))
        end = t.column("end_ns").to_numpy()
        w = _SegWriter(stage / "spans" / f"rank-{rank:05d}", SPAN_SCHEMA)
        flush_of = end // int(flush_s * 1e9)
        bounds = np.searchsorted(flush_of, np.arange(flush_of.max() + 2))
        per_seg = max(1, int(round(rotate_s / flush_s)))
        for j in range(len(bounds) - 1):
            w.flush(t.slice(bounds[j], bounds[j + 1] - bounds[j]), (j + 1) * flush_s)
            if (j + 1) % per_seg == 0:
                w.seal((j + 1) * flush_s)
        w.seal((len(bounds)) * flush_s)
        out[f"spans/rank-{rank:05d}"] = w.events
    return out


def _gen_nodes(args: tuple[Path, list[int], float, float, float, float]) -> dict[str, Any]:
    stage, nodes, seconds, hz, flush_s, rotate_s = args
    per_sample = []
    for g in range(GPUS):
        for d in ["nvlink"] + [f"nvlink:{k}" for k in range(LINKS)]:
            for m in ("tx_bytes_per_s", "rx_bytes_per_s"):
                per_sample.append((g, d, m))
    for p in range(PORTS):
        for m in ("tx_bytes_per_s", "rx_bytes_per_s"):
            per_sample.append((None, f"ib:mlx5_{p}:1", m))
    k = len(per_sample)
    samples = max(1, int(round(hz * flush_s)))
    out = {}
    rng = np.random.default_rng(1)
    for node in nodes:
        name = f"node{node}"
        gpu = pa.array([x[0] for x in per_sample] * samples, pa.int32())
        dev = pa.array([x[1] for x in per_sample] * samples)
        met = pa.array([x[2] for x in per_sample] * samples)
        nodecol = pa.array([name] * (k * samples))
        # rates within each device's physical range: a GPU's NVLink total up to 180 GB/s of
        # its 200, one of its 18 links up to 10 GB/s, an IB port up to 45 GB/s of its 50
        top = np.array([180e9 if d == "nvlink" else 10e9 if d.startswith("nvlink:") else 45e9
                        for _, d, _ in per_sample] * samples)
        val = pa.array(rng.uniform(0.05, 1.0, k * samples) * top)
        w = _SegWriter(stage / "counters" / name, COUNTER_SCHEMA)
        per_seg = max(1, int(round(rotate_s / flush_s)))
        flushes = int(seconds / flush_s)
        within = np.repeat((np.arange(samples) * (1e9 / hz)).astype(np.int64), k)
        for j in range(flushes):
            ts = pa.array(int(j * flush_s * 1e9) + within)
            t = pa.table([ts, nodecol, gpu, dev, met, val], schema=COUNTER_SCHEMA)
            w.flush(t, (j + 1) * flush_s)
            if (j + 1) % per_seg == 0:
                w.seal((j + 1) * flush_s)
        w.seal(flushes * flush_s)
        out[f"counters/{name}"] = w.events
    return out


def pregenerate(stage: Path, ranks: int, minutes: float, step_s: float, hz: float,
                flush_s: float, rotate_s: float, procs: int) -> dict[str, Any]:
    steps = int(minutes * 60 / step_s) + 2
    seconds = minutes * 60 + step_s
    chunks = [list(range(i, ranks, procs * 4)) for i in range(procs * 4)]
    nodes = [list(range(i, ranks // GPUS, procs)) for i in range(procs)]
    events: dict[str, Any] = {}
    with mp.get_context("fork").Pool(procs) as pool:
        for got in pool.imap_unordered(_gen_ranks, [(stage, c, ranks, step_s, steps, flush_s,
                                                     rotate_s) for c in chunks if c]):
            events.update(got)
        if hz > 0:
            for got in pool.imap_unordered(_gen_nodes, [(stage, n, seconds, hz, flush_s,
                                                         rotate_s) for n in nodes if n]):
                events.update(got)
    return events


# -- feeder ----------------------------------------------------------------------------------


def _feed(stage: Path, run: Path, events: dict[str, Any], t0: float, stop_s: float) -> None:
    """Move staged bytes into ``run`` when due (job seconds since wall time ``t0``)."""
    heap: list[tuple[float, int, int, int]] = []
    names = sorted(events)
    offset = {n: (i % 97) / 97 for i, n in enumerate(names)}  # writers are not in lockstep
    for i, n in enumerate(names):
        for k, (due, seq, _rec) in enumerate(events[n]):
            heapq.heappush(heap, (due + offset[n], i, k, seq))
    done_bytes: dict[str, int] = {}
    rows: dict[str, int] = {}
    beat_next = 0.0
    while heap:
        now = time.time() - t0
        if now > stop_s:
            return
        if now >= beat_next:
            _beats(run, [n for n in names if n.startswith("spans/")], t0, rows)
            beat_next = now + 1.0
        if heap[0][0] > now:
            time.sleep(min(0.02, heap[0][0] - now))
            continue
        due, i, k, seq = heapq.heappop(heap)
        name = names[i]
        _, _, rec = events[name][k]
        src = stage / name / f"seg-{seq:06d}"
        dst = run / name / f"seg-{seq:06d}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        side = (src.parent / (src.name + ".crc")).read_bytes()
        idx = rec if rec >= 0 else -1 - rec
        end = int.from_bytes(side[idx * _REC:idx * _REC + 8], "little")
        key = f"{name}/{seq}"
        start = done_bytes.get(key, 0)
        with open(src.parent / (src.name + ".arrows"), "rb") as f:
            f.seek(start)
            chunk = f.read(end - start)
        with open(dst.parent / (dst.name + ".arrows.open"), "ab") as f:
            f.write(chunk)
        with open(dst.parent / (dst.name + ".crc"), "ab") as f:
            f.write(side[idx * _REC:(idx + 1) * _REC])
        done_bytes[key] = end
        rows[name] = rows.get(name, 0) + 1
        if rec < 0:
            os.replace(dst.parent / (dst.name + ".arrows.open"),
                       dst.parent / (dst.name + ".arrows"))
            done_bytes.pop(key, None)


def _beats(run: Path, streams: list[str], t0: float, flushes: dict[str, int]) -> None:
    d = run / "heartbeat"
    d.mkdir(exist_ok=True)
    now = time.time_ns()
    for s in streams:
        name = s.split("/", 1)[1]
        hb = {"writer": name, "pid": os.getpid(), "host": "bench", "beat": int(time.time()),
              "interval_s": 1.0, "started_unix_ns": int(t0 * 1e9), "updated_unix_ns": now,
              "state": "running", "step": None,
              "streams": {s: {"rows": flushes.get(s, 0), "last_write_unix_ns": now,
                              "last_data_ns": None, "step": None, "closed": False}}}
        tmp = d / f".{name}.json.tmp"
        tmp.write_text(json.dumps(hb))
        os.replace(tmp, d / f"{name}.json")


# -- ticks -------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hook(spec: str | None) -> tuple[Callable[[Path, dict[str, Any]], None] | None, Any]:
    """(the hook's tick function, its module: a ``report(minutes)`` there is added to the
    JSON as ``dashboard``)."""
    if not spec:
        return None, None
    mod, _, fn = spec.partition(":")
    module = importlib.import_module(mod)
    return getattr(module, fn), module


def _engine(run: Path, t0: float, stop_s: float, tick_s: float, budget_s: float,
            ideal_every: int, step_s: float, out: Path) -> None:
    """The run's one step engine, ticking until ``stop_s``; writes its figures to ``out``."""
    engine = StepEngine(run, ideal_every=ideal_every)
    ticks = []
    while time.time() - t0 < stop_s:
        start = time.perf_counter()
        engine.update(budget_s=budget_s)
        took = time.perf_counter() - start
        job_s = time.time() - t0
        done = min(engine.done.values()) if engine.done else -1
        ticks.append({"t_s": job_s, "ms": took * 1e3, "rss_mb": _rss_mb(),
                      "lag_steps": int(job_s // step_s) - done, "done": done})
        time.sleep(max(0.0, tick_s - took))
    engine.close()
    out.write_text(json.dumps({"ticks": ticks, "late_rows": engine.late_rows}))


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return float(np.percentile(xs, q))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=64, help="ranks (GPUs); nodes = ranks / 8")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--step-s", type=float, default=10.0, help="the job's step time")
    ap.add_argument("--counter-hz", type=float, default=10.0, help="0: no counters")
    ap.add_argument("--flush-s", type=float, default=1.0)
    ap.add_argument("--rotate-s", type=float, default=5.0)
    ap.add_argument("--tick-s", type=float, default=1.0)
    ap.add_argument("--budget-s", type=float, default=0.5,
                    help="step-engine work per tick before it yields (the rest waits)")
    ap.add_argument("--ideal-every", type=int, default=0,
                    help="ideal timeline of every n-th step (0: none; it is the costly part)")
    ap.add_argument("--hook", default=None, help="module:function, the dashboard's tick")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: temp)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="the feeder (the job's writers) and the step engine on CPU 0, this "
                         "reader (and the dashboard of --hook, its refresh thread included) "
                         "on the other CPUs: the dashboard's cost without the simulated "
                         "job's writers on its cores")
    a = ap.parse_args(argv)
    if a.ranks % GPUS or a.ranks < 8:
        ap.error(f"--ranks {a.ranks} must be a multiple of {GPUS}")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-live-"))
    stage, run = work / "stage", work / "run"
    shutil.rmtree(work, ignore_errors=True)
    stage.mkdir(parents=True)
    t = time.perf_counter()
    events = pregenerate(stage, a.ranks, a.minutes, a.step_s, a.counter_hz, a.flush_s,
                         a.rotate_s, a.procs)
    gen_s = time.perf_counter() - t
    m = Manifest(source="synthetic", synthetic=True, description="bench_live")
    m.topology.nodes, m.topology.gpus_per_node = a.ranks // GPUS, GPUS
    m.topology.nvlink_peak_bytes_per_s, m.topology.ib_peak_bytes_per_s = 200e9, 50e9
    m.parallel.world_size, m.parallel.pp, m.parallel.schedule = a.ranks, 2, "dualpipev"
    run.mkdir()
    m.write(run)
    t0 = time.time() + 0.5
    stop_s = a.minutes * 60
    ctx = mp.get_context("fork")
    feeder = ctx.Process(target=_feed, args=(stage, run, events, t0, stop_s))
    report = work / "engine.json"
    eng = ctx.Process(target=_engine, args=(run, t0, stop_s, a.tick_s, a.budget_s,
                                            a.ideal_every, a.step_s, report))
    feeder.start()
    eng.start()
    pinned = None
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--pin needs at least 2 CPUs")
        for proc in (feeder, eng):
            os.sched_setaffinity(proc.pid, cpus[:1])  # type: ignore[arg-type]
        os.sched_setaffinity(0, cpus[1:])
        pinned = {"job_and_engine": cpus[:1], "reader": cpus[1:]}
    hook, hook_module = _hook(a.hook)
    # a live view keeps the newest steps' rows (heatmaps, the newest timeline) and whole-run
    # numbers from what each update brings
    results = StepResults(run, keep=("steps", "bubbles", "overlap", "ideal"), window_steps=4)
    running = RunningKpis()
    observer = Observer(run)
    policy = FreshnessPolicy()
    ticks: list[dict[str, Any]] = []
    try:
        while time.time() - t0 < stop_s:
            start = time.perf_counter()
            new = results.update()  # the new committed rows, per table
            running.update(new)  # whole-run numbers from them: O(new rows)
            headline = running.kpis()
            t_results = time.perf_counter() - start
            fresh = observer.assess(policy=policy)
            t_fresh = time.perf_counter() - start - t_results
            if hook is not None:
                hook(run, new)
            took = time.perf_counter() - start
            ticks.append({"t_s": time.time() - t0, "ms": took * 1e3,
                          "results_ms": t_results * 1e3, "fresh_ms": t_fresh * 1e3,
                          "rss_mb": _rss_mb(), "newest_step": headline["newest_step"],
                          "states": sorted({f.state for f in fresh})})
            time.sleep(max(0.0, a.tick_s - took))
    finally:
        feeder.terminate()
        feeder.join()
        eng.join(timeout=120)
        if eng.is_alive():
            eng.terminate()
    first = [x for x in ticks if x["t_s"] < 60]
    last = [x for x in ticks if x["t_s"] >= stop_s - 60]
    er = json.loads(report.read_text()) if report.exists() else {"ticks": [], "late_rows": None}
    efirst = [x for x in er["ticks"] if x["t_s"] < 60]
    elast = [x for x in er["ticks"] if x["t_s"] >= stop_s - 60]

    def stats(xs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
        v = [x[key] for x in xs]
        return {"p50": _pct(v, 50), "p95": _pct(v, 95), "max": max(v) if v else None}

    out = {
        "ranks": a.ranks, "nodes": a.ranks // GPUS, "minutes": a.minutes, "step_s": a.step_s,
        "counter_hz": a.counter_hz, "ideal_every": a.ideal_every, "budget_s": a.budget_s,
        "pregenerate_s": round(gen_s, 1), "ticks": len(ticks), "pinned": pinned,
        "tick_p50_ms": {"first": _pct([x["ms"] for x in first], 50),
                        "last": _pct([x["ms"] for x in last], 50)},
        "tick_p95_ms": {"first": _pct([x["ms"] for x in first], 95),
                        "last": _pct([x["ms"] for x in last], 95)},
        "results_ms": {"first": stats(first, "results_ms"), "last": stats(last, "results_ms")},
        "freshness_ms": {"first": stats(first, "fresh_ms"), "last": stats(last, "fresh_ms")},
        "rss_mb": {"first": first[-1]["rss_mb"] if first else None,
                   "last": ticks[-1]["rss_mb"] if ticks else None},
        "states_last": ticks[-1]["states"] if ticks else None,
        "engine": {
            "update_ms": {"first": stats(efirst, "ms"), "last": stats(elast, "ms")},
            "rss_mb": {"first": efirst[-1]["rss_mb"] if efirst else None,
                       "last": elast[-1]["rss_mb"] if elast else None},
            "lag_steps": {"first": efirst[-1]["lag_steps"] if efirst else None,
                          "last": elast[-1]["lag_steps"] if elast else None},
            "steps_done": er["ticks"][-1]["done"] if er["ticks"] else None,
            "late_rows": er["late_rows"],
        },
        "first_draw_ms": None,  # the dashboard's hook reports it (issue 10, items 5-7)
        # the curve: per minute of the run, the tick's p50 / p95 (ms) and the RSS at its end
        # (MB), so a cost that grows and then levels off (a live window filling) shows
        "by_minute": [
            {"minute": m + 1, "tick_p50_ms": _pct([x["ms"] for x in ms], 50),
             "tick_p95_ms": _pct([x["ms"] for x in ms], 95), "rss_mb": ms[-1]["rss_mb"]}
            for m in range(int(math.ceil(stop_s / 60)))
            if (ms := [x for x in ticks if m * 60 <= x["t_s"] < (m + 1) * 60])],
    }
    if hook_module is not None and hasattr(hook_module, "report"):
        dash = hook_module.report(a.minutes)
        out["dashboard"] = dash
        out["first_draw_ms"] = dash.get("first_draw_ms")
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
