"""Time ``compare`` (what ``dualscope compare``, the step engine's per-step ideal and the
dashboard's ideal timeline run) on run directories: the median wall time of ``--repeat`` calls
on spans already in memory, per run.

    .venv/bin/python bench/bench_compare.py sample_traces/synthetic-dsv3-pp16-ep64 \\
        sample_traces/reference-cpu-pp2-ep2-dualpipev --repeat 3
    # a live dashboard's window: the newest 20 steps of a bench_live.py run kept with --work
    .venv/bin/python bench/bench_live.py --ranks 64 --minutes 2 --step-s 5 --work /tmp/livework
    .venv/bin/python bench/bench_compare.py /tmp/livework/run --newest-steps 20 --repeat 1

Prints JSON: per run its spans, steps and ``compare_s`` (median and each call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.compare import compare  # noqa: E402
from profiler.store import RunReader  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--newest-steps", type=int, default=0,
                    help="keep only the spans of the newest K steps (a live window); 0: all")
    args = ap.parse_args(argv)
    out = []
    for run in args.runs:
        rd = RunReader(run)
        spans = rd.spans()
        if args.newest_steps:
            step = spans["step"].to_numpy(dtype=float, na_value=np.nan)
            spans = spans.loc[step >= np.nanmax(step) - args.newest_steps + 1].reset_index(
                drop=True)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            compare(spans, rd.manifest)
            times.append(time.perf_counter() - t)
        out.append({"run": str(run), "spans": len(spans),
                    "steps": int(spans["step"].nunique()),
                    "compare_s": round(statistics.median(times), 3),
                    "compare_s_all": [round(x, 3) for x in times]})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
