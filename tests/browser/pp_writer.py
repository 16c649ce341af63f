"""A live pipeline-parallel writer for the browser's live tests, run as its own process so a
test can SIGKILL it: ``python tests/browser/pp_writer.py RUN [STEPS] [STEP_S]``.

Two PP ranks (stage = rank), four micro-batches of F (1 ms) and B (2 ms) per step, timed on
the wall clock (the run clock is ``time.time_ns()``), with a heartbeat and one node's
counters. Each step is written rank by rank (rank 0's spans, a pause, rank 1's), so at most
moments the newest step is incomplete. Prints ``step N`` after each complete step.
``STEPS`` 0: forever."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from profiler.manifest import Manifest, Parallel  # noqa: E402
from profiler.store import RunWriter  # noqa: E402

MB = 4
F_NS, B_NS = 1_000_000, 2_000_000


def rank_rows(rank: int, step: int, t0: int) -> dict[str, list[object]]:
    """Rank ``rank``'s spans of ``step`` from ``t0`` (1F1B-like: all F, then all B)."""
    cols: dict[str, list[object]] = {k: [] for k in (
        "rank", "lane", "kind", "name", "step", "stage", "microbatch", "op", "start_ns",
        "end_ns")}
    t = t0 + rank * F_NS
    for op, dur in (("F", F_NS), ("B", B_NS)):
        for mb in range(MB):
            for k, v in (("rank", rank), ("lane", "compute"), ("kind", "action"),
                         ("name", f"{op}{mb}"), ("step", step), ("stage", rank),
                         ("microbatch", mb), ("op", op), ("start_ns", t), ("end_ns", t + dur)):
                cols[k].append(v)
            t += dur
    return cols


def main() -> None:
    run = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    step_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
    w = RunWriter(run, Manifest(source="probe", description="pp writer of the browser tests",
                                parallel=Parallel(world_size=2, pp=2)),
                  heartbeat="job", flush_s=0, fsync=False)
    assert w.heartbeat is not None
    step = 0
    while steps <= 0 or step < steps:
        t0 = time.time_ns()
        w.heartbeat.set_step(step)
        for rank in (0, 1):
            w.spans(rank).write(rank_rows(rank, step, t0))
            time.sleep(step_s / 2)
        now = time.time_ns()
        w.counters("node0").write({"ts_ns": [now], "node": ["node0"], "gpu": [0],
                                   "device": ["sm"], "metric": ["comm_sms"], "value": [1.0]})
        print(f"step {step}", flush=True)
        step += 1
    w.close()


if __name__ == "__main__":
    main()
