"""A writer process for the cursor tests: R ranks, each batch flushed at once, segments sealed
every ``rotate_s`` seconds; every row is unique by (rank, start_ns) so a reader can tell a row
seen twice from one skipped. Prints ``flushed N`` after each batch."""

from __future__ import annotations

import sys
import time

from profiler.manifest import Manifest
from profiler.store import RunWriter


def main() -> None:
    run, ranks, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rotate_s, delay = float(sys.argv[5]), float(sys.argv[6])
    w = RunWriter(run, Manifest(source="synthetic", synthetic=True), rotate_s=rotate_s,
                  flush_s=3600, batch_rows=10**9, fsync=False)
    t = 0
    for b in range(batches):
        for r in range(ranks):
            w.spans(r).write({
                "rank": [r] * rows, "lane": ["compute"] * rows, "kind": ["model"] * rows,
                "name": [f"b{b}"] * rows, "step": [b] * rows,
                "start_ns": list(range(t, t + rows)), "end_ns": list(range(t + 1, t + rows + 1)),
            })
            w.spans(r).flush()
        t += rows
        print(f"flushed {b + 1}", flush=True)
        time.sleep(delay)
    w.close()


if __name__ == "__main__":
    main()
