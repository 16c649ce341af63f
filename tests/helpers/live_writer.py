"""A live writer for the freshness tests: one rank's spans and one node's counters through a
RunWriter with a heartbeat, a step every ``delay`` seconds, ``batches`` steps (0: forever);
prints ``step N`` after each flush."""

from __future__ import annotations

import sys
import time

from profiler.manifest import Manifest
from profiler.store import RunWriter


def main() -> None:
    run, batches, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    w = RunWriter(run, Manifest(source="synthetic", synthetic=True), heartbeat="job",
                  flush_s=0, fsync=False)
    assert w.heartbeat is not None
    step = 0
    while batches <= 0 or step < batches:
        now = time.time_ns()
        w.heartbeat.set_step(step)
        w.spans(0).write({"rank": [0], "lane": ["compute"], "kind": ["model"], "name": ["F"],
                          "step": [step], "start_ns": [now - 1000], "end_ns": [now]})
        w.counters("node0").write({"ts_ns": [now], "node": ["node0"], "gpu": [0],
                                   "device": ["sm"], "metric": ["comm_sms"], "value": [1.0]})
        print(f"step {step}", flush=True)
        step += 1
        time.sleep(delay)
    w.close()


if __name__ == "__main__":
    main()
