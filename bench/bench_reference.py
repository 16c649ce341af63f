"""Instrumentation overhead of the reference run: step time with the continuous timers on
vs off (and, on GPU, with the periodic torch.profiler capture on top of the timers,
reported on its own against "timers on").

    python bench/bench_reference.py [--reps 3] [--steps 24] [--nproc 4 --pp 2 --ep 2]
                                    [--json-out bench/results/reference.json]

Two measurements, because on a shared machine the wall time of identical runs can differ by
tens of percent:

* **A/B in one run** (the primary number): ``run-reference --instrument-ab`` records spans on
  even steps only; the wrappers stay installed on odd steps. Adjacent steps share the same
  processes and the same machine load. Per run: median over even steps / median over odd
  steps (the first ``--warmup`` steps dropped) of the per-step mean over ranks of
  ``train/step_time_s`` (wall) and ``train/step_cpu_s`` (CPU seconds of the rank's process).
  It slightly *under*-states the cost: the wrapper call itself (~1 µs per action) is paid on
  both kinds of step.
* **Separate runs**: ``--instrument`` vs ``--no-instrument``, interleaved, first variant
  alternating per repetition; ``ratio_median`` (medians) and ``ratio_best`` (fastest runs).

Plus ``accounted_overhead``, independent of machine noise: spans per rank-step x (the cost of
recording one span + its share of the Arrow conversion and write, both microbenchmarked
here) / the step time. On a machine with no CUDA the capture variant is skipped and reported
as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _run(out: Path, args: list[str], extra: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "dualscope", "run-reference", "--out", str(out), *args,
           *extra, "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{proc.stderr[-3000:]}")


def per_step(run: Path, metric: str) -> dict[int, float]:
    """step -> mean over ranks of ``train/<metric>``."""
    from profiler.store import RunReader

    c = RunReader(run).counters()
    c = c[c["device"] == "train"]
    steps = c[c["metric"] == "step"][["node", "ts_ns", "value"]].rename(columns={"value": "step"})
    st = c[c["metric"] == metric][["node", "ts_ns", "value"]].merge(steps, on=["node", "ts_ns"])
    return {int(k): float(v) for k, v in st.groupby("step")["value"].mean().items()}


def _median_from(d: dict[int, float], warmup: int, parity: int | None = None) -> float:
    vals = [v for k, v in d.items() if k >= warmup and (parity is None or k % 2 == parity)]
    return statistics.median(vals)


def span_cost_ns(n: int = 20000) -> dict[str, float]:
    """Cost of recording one action span and one comm span with HostTimers (no I/O), and of
    converting + writing 1000 rows to a real stream."""
    from probes.timers import HostTimers, RunClock
    from profiler.schema import SPAN_SCHEMA
    from profiler.store import StreamWriter

    class Sink:
        def write(self, t: object) -> None: ...

        def flush(self) -> None: ...

        def close(self) -> None: ...

    t = HostTimers(0, RunClock(), Sink(), flush_s=1e9)
    t.begin_step(0)
    t0 = time.perf_counter_ns()
    for i in range(n):
        with t.action("0F1", stage=0, microbatch=i, op="F"):
            pass
    t1 = time.perf_counter_ns()
    for _ in range(n):
        with t.comm("dispatch", nbytes=1, pg="ep"):
            pass
    t2 = time.perf_counter_ns()
    t._drain()
    flush = []
    with tempfile.TemporaryDirectory() as d:
        w = StreamWriter(Path(d) / "s", SPAN_SCHEMA, fsync=False)
        t.writer = w
        for _ in range(5):
            for i in range(1000):
                with t.action("0F1", stage=0, microbatch=i, op="F"):
                    pass
            f0 = time.perf_counter_ns()
            t.flush()
            flush.append(time.perf_counter_ns() - f0)
        w.close()
    return {"action_ns": (t1 - t0) / n, "comm_ns": (t2 - t1) / n,
            "flush_1000_rows_ns": float(statistics.median(flush))}


def spans_per_rank_step(run: Path) -> float:
    from profiler.store import RunReader

    s = RunReader(run).spans(columns=["rank", "step"])
    return float(s.groupby(["rank", "step"]).size().mean()) if len(s) else 0.0


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24, help="steps of the A/B runs")
    ap.add_argument("--run-steps", type=int, default=12, help="steps of the separate runs")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--schedule", default="dualpipev")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--skip-separate", action="store_true", help="only the A/B runs")
    ap.add_argument("--profile-every", type=int, default=5,
                    help="capture period of the profiler variant (GPU only)")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    base = ["--nproc", str(a.nproc), "--pp", str(a.pp), "--ep", str(a.ep), "--schedule",
            a.schedule, "--microbatches", str(a.microbatches)]
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        raise SystemExit("torch is not installed: pip install torch==2.13.0") from None
    t_start, load_start = time.time(), _load()
    ab: dict[str, list[float]] = {"wall_ratio": [], "cpu_ratio": [], "wall_on_s": [],
                                  "wall_off_s": []}
    sep: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    spans_ps = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        for rep in range(a.reps):
            out = Path(tmp) / f"ab-{rep}"
            _run(out, [*base, "--steps", str(a.steps)], ["--instrument-ab"])
            wall, cpu = per_step(out, "step_time_s"), per_step(out, "step_cpu_s")
            on, off = _median_from(wall, a.warmup, 0), _median_from(wall, a.warmup, 1)
            ab["wall_on_s"].append(on)
            ab["wall_off_s"].append(off)
            ab["wall_ratio"].append(on / off)
            ab["cpu_ratio"].append(_median_from(cpu, a.warmup, 0) / _median_from(cpu, a.warmup, 1))
            if rep == 0:
                from profiler.store import RunReader

                s = RunReader(out).spans(columns=["rank", "step"])
                s = s[s["step"] % 2 == 0]
                spans_ps = float(s.groupby(["rank", "step"]).size().mean())
            print(f"A/B rep {rep}: on {on * 1e3:7.1f} ms, off {off * 1e3:7.1f} ms, wall ratio "
                  f"{ab['wall_ratio'][-1]:.3f}, CPU ratio {ab['cpu_ratio'][-1]:.3f}", flush=True)
        variants: dict[str, list[str]] = {}
        if not a.skip_separate:
            variants = {"on": [], "off": ["--no-instrument"]}
        if cuda and variants:
            variants["capture"] = ["--profile-every", str(a.profile_every)]
        for k in variants:
            sep["wall"][k], sep["cpu"][k] = [], []
        for rep in range(a.reps if variants else 0):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                out = Path(tmp) / f"{name}-{rep}"
                _run(out, [*base, "--steps", str(a.run_steps)], variants[name])
                sep["wall"][name].append(_median_from(per_step(out, "step_time_s"), a.warmup))
                sep["cpu"][name].append(_median_from(per_step(out, "step_cpu_s"), a.warmup))
                print(f"rep {rep} {name:8s} {sep['wall'][name][-1] * 1e3:8.1f} ms wall, "
                      f"{sep['cpu'][name][-1] * 1e3:8.1f} ms CPU per rank", flush=True)
    cost = span_cost_ns()
    off_step = statistics.median(ab["wall_off_s"])
    per_span = max(cost["action_ns"], cost["comm_ns"]) + cost["flush_1000_rows_ns"] / 1000
    result: dict[str, Any] = {
        "config": {"nproc": a.nproc, "pp": a.pp, "ep": a.ep, "schedule": a.schedule,
                   "microbatches": a.microbatches, "ab_steps": a.steps,
                   "run_steps": a.run_steps, "warmup": a.warmup, "reps": a.reps},
        "device": "cuda" if cuda else "cpu",
        "cpus": os.cpu_count(),
        "load_avg_1min_start_end": [load_start, _load()],
        "ab": {**ab, "wall_ratio_median": statistics.median(ab["wall_ratio"]),
               "cpu_ratio_median": statistics.median(ab["cpu_ratio"])},
        "spans_per_rank_step": spans_ps,
        "span_cost_ns": cost,
        "accounted_overhead": spans_ps * per_span / (off_step * 1e9),
        "bench_wall_s": None,
    }
    w, c = sep["wall"], sep["cpu"]
    if w.get("on"):
        result["separate"] = {
            "step_time_s": w, "step_cpu_s": c,
            "ratio_median": statistics.median(w["on"]) / statistics.median(w["off"]),
            "ratio_best": min(w["on"]) / min(w["off"]),
            "cpu_ratio_median": statistics.median(c["on"]) / statistics.median(c["off"]),
        }
    # the capture runs on top of the timers: report it against "timers on", on its own
    result["capture"] = (
        {"ratio_vs_timers_on_median":
         statistics.median(w["capture"]) / statistics.median(w["on"]),
         "profile_every": a.profile_every}
        if cuda and w.get("on") else
        "skipped: kernel capture needs a GPU (no CUDA here)" if not cuda else
        "run without --skip-separate to compare the capture with timers on")
    result["bench_wall_s"] = time.time() - t_start
    print(json.dumps(result, indent=2))
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
