"""What a full redraw of the Links page costs on a live run of cluster width: server time and
the JSON the browser receives, per figure. The run is one a ``bench/bench_live.py --work DIR``
left in ``DIR/run`` (its counters as the probe writes them: each GPU's NVLink total beside its
18 single links, 8 IB ports per node); it is read as the live dashboard reads it (the
20-step span window, the 2 M-row counter window), then the page is drawn ``--repeat`` times
warm, as every 5th live tick does (``links.render`` without a cursor, then Dash's JSON).

    .venv/bin/python bench/bench_live.py --ranks 64 --minutes 5 --work /tmp/live64
    .venv/bin/python bench/bench_links.py /tmp/live64 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dash._utils import to_json  # noqa: E402

from dashboard import ids  # noqa: E402
from dashboard.clock import next_clock  # noqa: E402
from dashboard.data import DataService  # noqa: E402
from dashboard.pages import links  # noqa: E402

FIGURES = ("kpis", "nvlink_heatmap", "ib_heatmap", "nvlink_lines", "nvlink_extend", "ib_lines",
           "ib_extend", "phase", "cursor")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="the --work folder of a bench_live.py run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    run = args.work / "run"
    if not (run / "manifest.json").is_file():
        print(f"{run}: no run here; make one with bench/bench_live.py --work {args.work}",
              file=sys.stderr)
        return 2
    svc = DataService(str(args.work), prometheus=None, live_span_steps=20)
    t = time.perf_counter()
    _rd, snap = svc.snapshot(run.name)
    read_s = time.perf_counter() - t
    info = {"run": run.name, "live": snap.live, "t0_ns": snap.t0_ns,
            "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9}
    clock = next_clock(None, "open", run_info=info).to_store()
    node = str(sorted(snap.counters["node"].unique())[0])
    t = time.perf_counter()
    links.render(svc, clock, node, "tx_bytes_per_s", None, ids.CLOCK)  # the first draw
    first_s = time.perf_counter() - t
    render, dump, out = [], [], None
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = links.render(svc, clock, node, "tx_bytes_per_s", None, ids.CLOCK)
        t1 = time.perf_counter()
        to_json(list(out))
        render.append((t1 - t) * 1e3)
        dump.append((time.perf_counter() - t1) * 1e3)
    assert out is not None
    sizes = {name: len(to_json(o)) for name, o in zip(FIGURES, out, strict=True)}
    print(json.dumps({
        "ranks": int(snap.spans["rank"].nunique()) if len(snap.spans) else 0,
        "spans_held": len(snap.spans), "counter_rows_held": len(snap.counters),
        "read_s": round(read_s, 2), "first_draw_s": round(first_s, 2),
        "render_ms_p50": round(statistics.median(render), 1),
        "json_ms_p50": round(statistics.median(dump), 1),
        "payload_mb": round(sum(sizes.values()) / 1e6, 2),
        "payload_mb_by_figure": {k: round(v / 1e6, 3) for k, v in sizes.items()},
        "nvlink_heatmap_rows": len(out[1].data[0].y) if out[1].data else 0,
        "nvlink_line_panels": len(out[3]["data"]) if isinstance(out[3], dict) else 0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
