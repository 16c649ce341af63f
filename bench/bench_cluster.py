"""First draw of every dashboard page on a 2,048-GPU run (issue 10, items 5 and 7): the
server's side of opening each page once, as its Dash callback runs it, plus Dash's JSON
serialisation of the outputs (not the HTTP round trip, not the browser's drawing: the browser
test ``tests/browser/test_dashboard_cluster.py`` times that for the GPUs page).

The run is the browser test's (``make_cluster_run``): 2,048 ranks as 128 pipelines of 16
stages on 256 nodes of 8 GPUs, 6 steps, one kernel span per rank and step, and the step
results (bubbles, overlap, SMs) of every rank and step, committed as one engine batch -- the
shape of a cluster run whose pages read step results. Each repeat opens the run in a fresh
``DataService`` (nothing cached), then draws every page once in the order a user would click
them (the header first, as every page has it)::

    .venv/bin/python bench/bench_cluster.py --repeat 3 --json

Prints JSON: per page the first draw in ms (median and each repeat), and the whole first
open (snapshot + every page).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser test's run, so both measure one shape

from browser.test_dashboard_cluster import RUN, WORLD, make_cluster_run  # noqa: E402
from live_dashboard_hook import timed_ms  # noqa: E402  # the live hook's timing, the same rule

from dashboard import ids  # noqa: E402
from dashboard.clock import next_clock  # noqa: E402
from dashboard.data import DataService  # noqa: E402
from dashboard.pages import gpus, links, overview, sms, timeline  # noqa: E402
from dashboard.status import FreshnessTracker, status_outputs  # noqa: E402


def first_open(runs: Path) -> dict[str, float]:
    """ms per page for one fresh open of the run."""
    svc = DataService(str(runs), prometheus=None)
    out: dict[str, float] = {}
    t = time.perf_counter()
    _rd, snap = svc.snapshot(RUN)
    out["snapshot"] = (time.perf_counter() - t) * 1e3
    info = {"run": RUN, "live": snap.live, "t0_ns": snap.t0_ns,
            "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9}
    clock = next_clock(None, "open", run_info=info).to_store()
    tracker = FreshnessTracker(svc)
    pages: dict[str, Callable[[], Any]] = {
        "header": lambda: status_outputs(tracker, clock),
        "gpus": lambda: gpus.render(svc, clock, "pipeline", "bubble"),
        "overview": lambda: overview.render(svc, clock, None, None, None),
        "timeline": lambda: timeline.render(svc, clock, None, "all", ["comm", "ideal"], None,
                                            ids.CLOCK, None),
        "sms": lambda: sms.render(svc, clock, "all", None),
        "links": lambda: links.render(svc, clock, None, "tx_bytes_per_s", None, None),
    }
    for name, fn in pages.items():
        out[name] = timed_ms(fn)
    out["whole_open"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        runs = Path(tmp) / "runs"
        t = time.perf_counter()
        make_cluster_run(runs)
        build_s = time.perf_counter() - t
        opens = [first_open(runs) for _ in range(a.repeat)]
    pages = list(opens[0])
    result = {
        "ranks": WORLD, "repeat": a.repeat, "build_s": round(build_s, 1),
        "first_draw_ms": {p: round(statistics.median(o[p] for o in opens), 1) for p in pages},
        "each_ms": {p: [round(o[p], 1) for o in opens] for p in pages},
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        for p in pages:
            print(f"{p:>10}: {result['first_draw_ms'][p]:8.1f} ms  {result['each_ms'][p]}")
    return result


if __name__ == "__main__":
    main()
