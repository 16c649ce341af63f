"""Dashboard benchmarks: the timeline callback (server time and payload at several zoom levels)
on the synthetic cluster sample and on a 1 M-span run, and the live refresh callback for 64 GPUs.

    .venv/bin/python bench/bench_dashboard.py            # everything (the 1 M-span run is
                                                         # generated once into bench/data/)
    .venv/bin/python bench/bench_dashboard.py --quick    # the cluster sample and live only

"Server time" is the callback as Dash calls it (read the cached run, cut the window, aggregate,
build the figure) plus Dash's JSON serialisation of the figure; "payload" is the size of that
JSON, i.e. what the browser receives. One-time costs (reading the run, the analyses, the ideal
timeline, the timeline index) are reported separately: they are paid once per run, or once per
change of a live run. Results: bench/results/dashboard.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dash._utils import to_json  # noqa: E402

from dashboard import ids  # noqa: E402
from dashboard.clock import next_clock  # noqa: E402
from dashboard.data import DataService  # noqa: E402
from dashboard.pages import links, render_key, timeline  # noqa: E402
from profiler.synthetic import SyntheticConfig, generate, manifest_for, write_run  # noqa: E402

SAMPLE = ROOT / "sample_traces" / "synthetic-dsv3-pp16-ep64"
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
BIG_STEPS = 43  # ~23.7 k spans per step of the cluster shape: 1.02 M spans


def _timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _clock(svc: DataService, run: str) -> dict[str, Any]:
    _rd, snap = svc.snapshot(run)
    return next_clock(None, "open", run_info={"run": run, "live": snap.live, "t0_ns": snap.t0_ns,
                                              "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9})


def bench_timeline(runs: Path, run: str, repeat: int) -> dict[str, Any]:
    svc = DataService(str(runs))
    one_time: dict[str, float] = {}
    t = time.perf_counter()
    rd, snap = svc.snapshot(run)
    one_time["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rd.analyses(snap)
    one_time["analyses_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rd.ideal(snap)
    one_time["ideal_timeline_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rd.timeline_index(snap)
    one_time["timeline_index_s"] = time.perf_counter() - t
    clock = _clock(svc, run)
    steps = timeline.step_windows(rd, snap)
    mid = steps.iloc[len(steps) // 2]
    a, b = float(mid["start_s"]), float(mid["end_s"])
    cases = {
        "all 64 ranks, whole run": ("all", None),
        "all 64 ranks, one step": ("all", [a, b]),
        "one pipeline (16 ranks), whole run": ("pipeline:1", None),
        "one pipeline, one step": ("pipeline:1", [a, b]),
        "one pipeline, 10 ms": ("pipeline:1", [a + 0.05, a + 0.06]),
        "all 64 ranks, 1 ms": ("all", [a + 0.05, a + 0.051]),
    }
    rows = []
    for name, (ranks, view) in cases.items():
        cb_s, out = _timed(lambda r=ranks, v=view: timeline.render(
            svc, clock, None, r, ["comm", "ideal"], v), repeat)
        fig, status = out[0], out[1]
        ser_s, payload = _timed(lambda f=fig: to_json(f), repeat)
        rows.append({"case": name, "mode": status.split("drawn as ")[1].split(" ")[0],
                     "spans_in_window": int(status.split(" spans")[0].replace(",", "")),
                     "callback_ms": cb_s * 1e3, "serialize_ms": ser_s * 1e3,
                     "server_ms": (cb_s + ser_s) * 1e3, "payload_mb": len(payload) / 1e6})
    return {"run": run, "spans": len(snap.spans), "ranks": int(snap.spans["rank"].nunique()),
            "one_time": one_time, "zoom": rows}


def bench_live(repeat: int) -> dict[str, Any]:
    """A 64-GPU run being written: the Links tick (extendData with the new samples), and
    the no-change tick of the other pages (render key)."""
    from profiler.store import RunWriter

    cfg = SyntheticConfig(steps=3)
    out: dict[str, Any] = {"gpus": cfg.world_size}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        # the writer's defaults: segments sealed every 5 s, so the open one holds the last seconds
        w = RunWriter(runs / "live", manifest_for(cfg), flush_s=0, fsync=False)
        gen = generate(cfg)
        spans, counters = next(gen)
        w.write_spans(spans)
        for node, part in counters.groupby("node"):
            w.counters(str(node)).write(part)
        w.flush()
        svc = DataService(str(runs), live_reload_s=0.0)
        clock = _clock(svc, "live")
        full = links.render(svc, clock, "node5", "tx_bytes_per_s", None)
        cursor = full[-1]
        for node in counters["node"].unique():  # what 5 s of rotation would have done
            w.counters(str(node)).rotate()
        # one more second of samples (200 per series at 5 ms) arrives
        spans, counters = next(gen)
        w.write_spans(spans)
        for node, part in counters.groupby("node"):
            w.counters(str(node)).write(part)
        w.flush()
        tick = next_clock(clock, "tick", run_info={"run": "live", "live": True,
                                                   "duration_s": 1.0})
        times, sizes = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            res = links.render(svc, tick, "node5", "tx_bytes_per_s", cursor, ids.CLOCK)
            payload = to_json([res[4], res[6], res[-1]])
            times.append(time.perf_counter() - t)
            sizes.append(len(payload))
        new_samples = int(sum(len(x) for x in res[4][0]["x"]) + sum(len(x) for x in res[6][0]["x"]))
        out["links_tick"] = {"server_ms": statistics.median(times) * 1e3,
                             "payload_kb": statistics.median(sizes) / 1e3,
                             "new_samples_sent": new_samples,
                             "counter_rows_in_run": int(len(svc.snapshot("live")[1].counters))}
        key = render_key(svc, tick, "pipeline:1")
        cb_s, _ = _timed(lambda: render_key(svc, tick, "pipeline:1") == key, repeat)
        out["unchanged_tick"] = {"server_ms": cb_s * 1e3}
        w.close()
    return out


def ensure_big_run() -> Path:
    run = DATA / "runs" / "synthetic-1m"
    if not (run / "manifest.json").exists():
        run.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating the 1 M-span run into {run} (once)…", flush=True)
        write_run(run, SyntheticConfig(steps=BIG_STEPS))
    return run.parent


def _table(res: dict[str, Any]) -> str:
    lines = [f"\n{res['run']}: {res['spans']:,} spans, {res['ranks']} ranks; one-time "
             + ", ".join(f"{k} {v:.2f}" for k, v in res["one_time"].items())]
    lines.append(f"  {'case':38} {'mode':9} {'spans':>9} {'callback':>9} {'json':>7} "
                 f"{'server':>8} {'payload':>8}")
    for r in res["zoom"]:
        lines.append(f"  {r['case']:38} {r['mode']:9} {r['spans_in_window']:9,} "
                     f"{r['callback_ms']:7.0f}ms {r['serialize_ms']:5.0f}ms "
                     f"{r['server_ms']:6.0f}ms {r['payload_mb']:6.2f}MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 1 M-span run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        (runs / SAMPLE.name).symlink_to(SAMPLE, target_is_directory=True)
        results["cluster_sample"] = bench_timeline(runs, SAMPLE.name, args.repeat)
        print(_table(results["cluster_sample"]), flush=True)
    if not args.quick:
        results["one_million"] = bench_timeline(ensure_big_run(), "synthetic-1m", args.repeat)
        print(_table(results["one_million"]), flush=True)
    results["live_64_gpus"] = bench_live(args.repeat)
    lv = results["live_64_gpus"]
    print(f"\nlive, {lv['gpus']} GPUs: Links tick {lv['links_tick']['server_ms']:.1f} ms, "
          f"{lv['links_tick']['payload_kb']:.1f} kB ({lv['links_tick']['new_samples_sent']} new "
          f"samples); unchanged tick {lv['unchanged_tick']['server_ms']:.2f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dashboard.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS / 'dashboard.json'}")
    worst = max(r["server_ms"] for k in ("cluster_sample", "one_million") if k in results
                for r in results[k]["zoom"])
    big = max(r["payload_mb"] for k in ("cluster_sample", "one_million") if k in results
              for r in results[k]["zoom"])
    ok = worst < 1000 and big < 5 and lv["links_tick"]["server_ms"] < 100
    print(f"targets (timeline < 1 s and < 5 MB at any zoom, live tick < 100 ms): "
          f"{'met' if ok else 'MISSED'} (worst {worst:.0f} ms, {big:.2f} MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
