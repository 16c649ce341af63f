"""Profile one offline update of the step engine (issue 10): R ranks of ``bench_live``'s
pre-generated run (its segments, counters at 10 Hz), all fed at once, then
``StepEngine.update(final=True)`` under cProfile.

    .venv/bin/python bench/profile_engine.py --ranks 128 --minutes 1 [--top 35]

Prints the update's wall time, the result tables' row counts and the top functions by
cumulative time. The generated run is kept under ``--work`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live  # noqa: E402

from profiler.manifest import Manifest  # noqa: E402
from profiler.steps.engine import StepEngine  # noqa: E402


def make_run(work: Path, ranks: int, minutes: float) -> Path:
    stage, run = work / "stage", work / "run"
    stage.mkdir(parents=True)
    events = bench_live.pregenerate(stage, ranks, minutes, 10.0, 10.0, 1.0, 5.0, 2)
    m = Manifest(source="synthetic", synthetic=True, description="profile_engine")
    m.topology.nodes, m.topology.gpus_per_node = ranks // 8, 8
    m.topology.nvlink_peak_bytes_per_s, m.topology.ib_peak_bytes_per_s = 200e9, 50e9
    m.parallel.world_size, m.parallel.pp, m.parallel.schedule = ranks, 2, "dualpipev"
    run.mkdir()
    m.write(run)
    bench_live._feed(stage, run, events, time.time() - 1e6, 1e9)  # everything due at once
    shutil.rmtree(stage)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=128)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="profile-engine-"))
    run = work / "run" if (work / "run").exists() else make_run(work, a.ranks, a.minutes)
    shutil.rmtree(run / "derived", ignore_errors=True)
    t = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    with StepEngine(run, ideal_every=0) as engine:
        new = engine.update(final=True)
    prof.disable()
    print(f"engine update (final) {time.perf_counter() - t:.1f} s",
          {k: len(v) for k, v in new.items()})
    pstats.Stats(prof).sort_stats("cumtime").print_stats(a.top)


if __name__ == "__main__":
    main()
