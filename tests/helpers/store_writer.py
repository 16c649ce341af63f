"""A writer process for the store tests: appends batches of spans to RUN forever (or for N
batches), printing the number of rows it has flushed after each flush so the test knows what
must survive a SIGKILL."""

from __future__ import annotations

import sys
import time

from profiler.manifest import Manifest
from profiler.store import RunWriter


def main() -> None:
    run, ranks, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    w = RunWriter(run, Manifest(source="synthetic", synthetic=True), rotate_s=0.2,
                  flush_s=3600, batch_rows=10**9)
    t = 0
    for b in range(batches if batches > 0 else 10**12):
        for r in range(ranks):
            w.spans(r).write({
                "rank": [r] * rows, "lane": ["compute"] * rows, "kind": ["model"] * rows,
                "name": [f"b{b}"] * rows, "step": [b] * rows,
                "start_ns": list(range(t, t + rows)), "end_ns": list(range(t + 1, t + rows + 1)),
            })
            w.spans(r).flush()
        t += rows
        print(f"flushed {b + 1}", flush=True)
        # rows that are only ever buffered (rank 99 is flushed on close alone): lost on SIGKILL
        w.spans(99).write({"rank": [99], "lane": ["compute"], "kind": ["model"], "name": ["pending"],
                          "start_ns": [t], "end_ns": [t + 1]})
        if delay:
            time.sleep(delay)
    w.close()


if __name__ == "__main__":
    main()
