"""What one live update of :class:`profiler.store.tail.RunTail` costs once its counter window is
full: a run of ``--nodes`` counter streams is written ahead (``--held`` rows in all), a tail
reads it whole, then each round every stream gains ``--new`` rows (one flush, as an agent's
second of samples) and the tail's ``update()`` is timed. With ``--max-rows`` below what was
written the window drops the oldest rows every round, as a live dashboard's does after its
second minute at 64 ranks (2 M rows). With ``--ranks R`` the run also has R span streams
shaped like a live 64-rank window's (strings, nullable integers; ``--span-new`` rows per rank
per round, ``--rounds-per-step`` rounds a step) held in a window of ``--span-steps`` steps, as
the dashboard's live snapshot holds them. Prints JSON: per-update ms (p50, max) and the held
rows.

    .venv/bin/python bench/bench_tail.py --nodes 8 --held 2000000 --new 3200 --rounds 20
    .venv/bin/python bench/bench_tail.py --nodes 8 --held 2000000 --new 3200 --rounds 20 \
        --ranks 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.manifest import Manifest, Parallel  # noqa: E402
from profiler.store import RunReader, RunWriter  # noqa: E402
from profiler.store.tail import RunTail  # noqa: E402


def _rows(rng: np.random.Generator, node: str, t0: int, n: int) -> dict[str, object]:
    devices = np.array([f"nvlink:{i}" for i in range(18)] + [f"ib:mlx5_{i}:1" for i in range(8)])
    return {"ts_ns": (t0 + np.arange(n) * 1000).tolist(), "node": [node] * n,
            "gpu": rng.integers(0, 8, n).tolist(),
            "device": devices[rng.integers(0, 26, n)].tolist(),
            "metric": ["tx_bytes_per_s"] * n, "value": rng.uniform(0, 1e9, n).tolist()}


_NAMES = np.array([f"{k}_{i}" for k in ("gemm", "attn", "moe_dispatch", "moe_combine",
                                         "layernorm", "nccl:all_to_all") for i in range(12)])


def _spans(rng: np.random.Generator, ranks: int, step: int, t0: int, n: int
           ) -> dict[str, object]:
    """``n`` spans per rank of ``step`` from ``t0``: kernels, ops and annotations."""
    rank = np.repeat(np.arange(ranks), n)
    m = len(rank)
    start = t0 + np.tile(np.arange(n) * 1000, ranks)
    kind = np.array(["kernel", "op", "annotation"])[rng.integers(0, 3, m)]
    mb = rng.integers(0, 16, m)
    return {"rank": rank.tolist(), "lane": np.where(kind == "kernel", "compute", "host").tolist(),
            "kind": kind.tolist(), "name": _NAMES[rng.integers(0, len(_NAMES), m)].tolist(),
            "step": [step] * m, "stage": (rank % 8).tolist(),
            "microbatch": [None if x > 13 else int(x) for x in mb],
            "op": np.array(["F", "B", "W", None])[rng.integers(0, 4, m)].tolist(),
            "start_ns": start.tolist(), "end_ns": (start + 900).tolist(),
            "sms": [int(x) if k == "kernel" else None for x, k in
                    zip(rng.integers(1, 132, m), kind, strict=True)],
            "stream": [7 if k == "kernel" else None for k in kind],
            "tid": [None if k == "kernel" else 1234 for k in kind],
            "device": (rank % 8).tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--held", type=int, default=2_000_000, help="rows written before timing")
    ap.add_argument("--new", type=int, default=3200, help="rows per stream per round")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-rows", type=int, default=None,
                    help="the tail's row cap (default --held)")
    ap.add_argument("--ranks", type=int, default=0, help="span streams (0: counters only)")
    ap.add_argument("--span-new", type=int, default=55, help="spans per rank per round")
    ap.add_argument("--rounds-per-step", type=int, default=5)
    ap.add_argument("--span-steps", type=int, default=20, help="the span window, in steps")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    nodes = [f"node{i:03d}" for i in range(args.nodes)]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        w = RunWriter(run, Manifest(source="probe", parallel=Parallel(world_size=8 * args.nodes)),
                      rotate_s=3600, flush_s=3600)
        per = args.held // args.nodes
        t = 10**15
        for node in nodes:
            for a in range(0, per, 200_000):
                w.counters(node).write(_rows(rng, node, t + a * 1000, min(200_000, per - a)))
        rnd = 0
        ts = 10**15
        if args.ranks:  # the span window, full
            for rnd in range(args.span_steps * args.rounds_per_step):
                w.write_spans(_spans(rng, args.ranks, rnd // args.rounds_per_step, ts,
                                     args.span_new))
                ts += args.span_new * 1000
        w.flush()
        t += per * 1000
        tail = RunTail(RunReader(run), counters_max_rows=args.max_rows or args.held,
                       span_steps=args.span_steps if args.ranks else None)
        tail.update()
        ms: list[float] = []
        for _ in range(args.rounds):
            for node in nodes:
                w.counters(node).write(_rows(rng, node, t, args.new))
            t += args.new * 1000
            if args.ranks:
                rnd += 1
                w.write_spans(_spans(rng, args.ranks, rnd // args.rounds_per_step, ts,
                                     args.span_new))
                ts += args.span_new * 1000
            w.flush()
            t0 = time.perf_counter()
            tail.update()
            ms.append((time.perf_counter() - t0) * 1e3)
        held = len(tail.counters)
        held_spans = len(tail.spans)
        w.close()
    print(json.dumps({"nodes": args.nodes, "held_rows": held, "ranks": args.ranks,
                      "held_spans": held_spans, "new_rows_per_round":
                      args.new * args.nodes, "update_ms_p50": round(statistics.median(ms), 1),
                      "update_ms_max": round(max(ms), 1), "update_ms": [round(x, 1) for x in ms]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
