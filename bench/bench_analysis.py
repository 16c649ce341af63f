"""Benchmark ``dualscope analyze`` on synthetic runs of 128, 512 and 2048 ranks.

Each size runs in its own subprocess (so peak RSS is that size's alone): it generates the run
with ``bench/gen_synthetic_run.py`` when ``DATA/run-N`` is missing, then times
:func:`profiler.engine.analyze_run` over it. Reported per size: spans, wall and CPU seconds,
spans per second, peak RSS. Checks: time per span of the largest size within 1.5x of the
smallest (~linear growth) and peak RSS under 24 GB.

    python bench/bench_analysis.py --sizes 128 512 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEMORY_LIMIT_BYTES = 24e9
LINEAR_TOLERANCE = 1.5


def child(run: str, engine: str, workers: int | None) -> None:
    """Analyse one run in this process and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    from profiler.engine import analyze_run
    from profiler.manifest import Manifest

    spans = Manifest.read(run).extra.get("bench", {}).get("spans")
    wall, cpu = time.perf_counter(), time.process_time()
    res = analyze_run(run, engine=engine, workers=workers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({
        "run": run, "engine": engine, "spans": spans, "wall_s": wall, "cpu_s": cpu,
        "spans_per_s": spans / wall if spans else None, "peak_rss_bytes": self_rss,
        "peak_rss_children_bytes": kids_rss,
        "rows": {k: len(v) for k, v in res.items()},
        "stragglers": res["stragglers"]["rank"].tolist(),
    }))


def ensure_run(data: Path, ranks: int) -> tuple[Path, float | None]:
    run = data / f"run-{ranks}"
    if (run / "manifest.json").exists():
        return run, None
    data.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "gen_synthetic_run.py"), "--ranks", str(ranks),
                    "--out", str(run), "--quiet"], check=True)
    return run, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--engine", choices=["local", "dask"], default="local")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_analysis.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.engine, a.workers)
        return
    results = []
    for n in a.sizes:
        run, gen_s = ensure_run(a.data, n)
        cmd = [sys.executable, __file__, "--child", str(run), "--engine", a.engine]
        if a.workers:
            cmd += ["--workers", str(a.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(ranks=n, generate_s=gen_s)
        results.append(r)
        print(f"{n:5d} ranks  {r['spans']:>11,} spans  wall {r['wall_s']:7.1f} s  "
              f"cpu {r['cpu_s']:7.1f} s  {r['spans_per_s']:>10,.0f} spans/s  "
              f"peak RSS {r['peak_rss_bytes'] / 1e9:5.2f} GB"
              + (f"  (generated in {gen_s:.0f} s)" if gen_s else ""), flush=True)
    per_span = [r["wall_s"] / r["spans"] for r in results]
    cpu_per_span = [r["cpu_s"] / r["spans"] for r in results]
    checks = {
        "wall_per_span_growth": per_span[-1] / per_span[0],
        "cpu_per_span_growth": cpu_per_span[-1] / cpu_per_span[0],
        "linear": cpu_per_span[-1] / cpu_per_span[0] <= LINEAR_TOLERANCE,
        "max_peak_rss_bytes": max(max(r["peak_rss_bytes"], r["peak_rss_children_bytes"])
                                  for r in results),
    }
    checks["memory_ok"] = checks["max_peak_rss_bytes"] <= MEMORY_LIMIT_BYTES
    print(f"time per span, largest / smallest size: wall x{checks['wall_per_span_growth']:.2f}, "
          f"cpu x{checks['cpu_per_span_growth']:.2f} -> "
          f"{'~linear' if checks['linear'] else 'NOT linear'} (tolerance x{LINEAR_TOLERANCE}); "
          f"peak RSS {checks['max_peak_rss_bytes'] / 1e9:.2f} GB -> "
          f"{'within' if checks['memory_ok'] else 'OVER'} 24 GB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"results": results, "checks": checks}, indent=2) + "\n")
    if not (checks["linear"] and checks["memory_ok"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
