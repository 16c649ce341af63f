"""Time the schedule model: build a schedule's op lists and simulate its ideal timeline.

    .venv/bin/python bench/bench_model.py                     # DualPipe, PP 16, M 64
    .venv/bin/python bench/bench_model.py --schedule dualpipev --pp 8 --microbatches 32 -n 51

Prints one line with the median wall time (ms) of N runs of build + simulate (spans DataFrame
included), each part's median, the median CPU time (less sensitive to a busy machine) and the
fastest run. Target: DualPipe PP 16, M 64 well under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.schedules import build  # noqa: E402
from profiler.simulate import Costs, simulate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedule", default="dualpipe")
    ap.add_argument("--pp", type=int, default=16)
    ap.add_argument("--microbatches", type=int, default=64)
    ap.add_argument("-n", "--repeats", type=int, default=21)
    ap.add_argument("--p2p", type=float, default=0.1)
    args = ap.parse_args(argv)
    costs = Costs(f=1, b=2, w=1, fb=3)
    simulate(build(args.schedule, args.pp, args.microbatches), costs)  # warm caches and imports
    t_build, t_sim, t_all, t_cpu = [], [], [], []
    result = None
    for _ in range(args.repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        schedule = build(args.schedule, args.pp, args.microbatches)
        t1 = time.perf_counter()
        result = simulate(schedule, costs, p2p=args.p2p)
        t2 = time.perf_counter()
        t_cpu.append(time.process_time() - c0)
        t_build.append(t1 - t0)
        t_sim.append(t2 - t1)
        t_all.append(t2 - t0)
    assert result is not None
    ms = 1e3
    print(f"bench_model: {args.schedule} PP {args.pp} M {args.microbatches} "
          f"({result.schedule.num_ops} ops, p2p {args.p2p}): median {statistics.median(t_all) * ms:.2f} ms "
          f"over {args.repeats} runs (build {statistics.median(t_build) * ms:.2f} ms, simulate "
          f"{statistics.median(t_sim) * ms:.2f} ms; CPU time {statistics.median(t_cpu) * ms:.2f} ms, "
          f"fastest {min(t_all) * ms:.2f} ms); makespan {result.makespan:.4g}, "
          f"max bubble {result.max_bubble:.4g} units")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
