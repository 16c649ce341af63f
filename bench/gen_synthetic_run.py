"""Write a synthetic DualPipe run for benchmarks: ``--ranks N`` GPUs, ~10k spans per rank.

The per-pipeline timeline comes from the schedule model (``dualscope model``'s simulator,
:func:`profiler.simulate.simulate` on :func:`profiler.schedules.build` ``("dualpipe", 16, M)``
with 3 % jitter). Per step a few pipelines are simulated with different seeds (plus one for the
pipeline of the injected straggler, whose stages run 1.5x slower) and every data-parallel
pipeline reuses one of them, with noise added here: a per-rank clock skew of up to 20 us and
each span shortened by 0-4 %. Each op is expanded like a DeepSeek-V3 chunk into its pipeline
action, compute kernels (112 SMs), dispatch / combine kernels (20 SMs, process group ``ep``)
and a PP send; NVLink and IB counters (every 10 ms) follow the time each GPU spends in
communication. Rank r = pp_position * dp + pipeline (PP outermost), 8 GPUs per node.
2048 ranks give about 20 M spans.

    python bench/gen_synthetic_run.py --ranks 512 --out bench/data/run-512
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiler.analysis.intervals import union  # noqa: E402
from profiler.manifest import Manifest, Parallel, Topology  # noqa: E402
from profiler.schedules import build  # noqa: E402
from profiler.schema import counters_table, spans_table  # noqa: E402
from profiler.simulate import Costs, simulate  # noqa: E402
from profiler.store import RunWriter  # noqa: E402

SPANS_PER_RANK = 20_000_000 / 2048  # 2048 ranks ~ 20 M spans
GPUS, PP, SMS, COMM_SMS = 8, 16, 132, 20
UNIT_NS = 1_000_000  # one cost unit = 1 ms
STEP_GAP_NS = 5_000_000
COUNTER_DT_NS = 10_000_000
NVLINK_BPS, IB_BPS = 155e9, 45e9
TEMPLATES_PER_STEP = 4
STRAGGLER_RANK, STRAGGLER_SLOWDOWN = 37, 1.5

# (lane, name, start fraction, end fraction) per op kind; lanes: c compute, m comm, p pp_comm
_CHUNK = {
    "F": [("c", "attn(F)", 0.0, 0.3), ("m", "dispatch(F)", 0.3, 0.44), ("c", "mlp(F)", 0.44, 0.82),
          ("m", "combine(F)", 0.82, 0.96), ("p", "send_F", 0.96, 1.0)],
    "B": [("m", "combine(B)", 0.0, 0.12), ("c", "mlp(B)", 0.12, 0.5), ("m", "dispatch(B)", 0.5, 0.62),
          ("c", "attn(B)", 0.62, 0.96), ("p", "send_B", 0.96, 1.0)],
    "W": [("c", "mlp(W)", 0.0, 0.5), ("c", "attn(W)", 0.5, 1.0)],
    "FB": [("c", "mlp(B+W+F)", 0.0, 0.46), ("c", "attn(B+W+F)", 0.46, 1.0),
           ("m", "dispatch(F)", 0.02, 0.21), ("m", "dispatch(B)", 0.23, 0.42),
           ("m", "combine(F)", 0.44, 0.63), ("p", "send_F+send_B", 0.65, 0.72),
           ("m", "combine(B)", 0.76, 0.95)],
}
_CHUNK["I"] = [(lane, n.replace("(B)", "(I)"), a, b) for lane, n, a, b in _CHUNK["B"]]
_LANES = {"c": "compute", "m": "comm", "p": "pp_comm"}


def _templates(sched, step: int, dp: int, straggler_pipe: int) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Simulated pipelines of one step and the pipelines that reuse each."""
    base = Costs(f=1.0, b=2.0, w=1.0, fb=3.0)
    out = []
    pipes = np.arange(dp)
    normal = pipes[pipes != straggler_pipe]
    for k in range(min(TEMPLATES_PER_STEP, len(normal))):
        sim = simulate(sched, base, jitter=0.03, seed=step * 100 + k, unit_ns=UNIT_NS, step=step)
        out.append((sim.spans, normal[k::TEMPLATES_PER_STEP]))
    if straggler_pipe >= 0:
        pos = STRAGGLER_RANK // dp
        mult = np.ones(sched.num_stages)
        mult[[pos, sched.num_stages - 1 - pos]] = STRAGGLER_SLOWDOWN  # DualPipe: r, P-1-r
        slow = Costs(f=mult.tolist(), b=(2.0 * mult).tolist(), w=mult.tolist(),
                     fb=(3.0 * mult).tolist())
        sim = simulate(sched, slow, jitter=0.03, seed=step * 100 + 99, unit_ns=UNIT_NS, step=step)
        out.append((sim.spans, np.array([straggler_pipe])))
    return out


def _step_spans(sched, step: int, t0: int, dp: int, world: int, skew: np.ndarray,
                rng: np.random.Generator) -> pd.DataFrame:
    straggler_pipe = STRAGGLER_RANK % dp if world > STRAGGLER_RANK else -1
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("rank", "stage", "mb", "op", "s", "e", "name", "lane")}
    for ops, pipes in _templates(sched, step, dp, straggler_pipe):
        n = len(ops)
        rank = (ops["rank"].to_numpy()[None, :] * dp + pipes[:, None]).ravel()
        rep = len(pipes)
        s = np.tile(ops["start_ns"].to_numpy(), rep) + t0 + skew[rank]
        e = np.tile(ops["end_ns"].to_numpy(), rep) + t0 + skew[rank]
        kind = np.tile(ops["op"].to_numpy(dtype=object), rep)
        stage = np.tile(ops["stage"].to_numpy(), rep)
        mb = np.tile(ops["microbatch"].to_numpy(), rep)
        name = np.tile(("PP:" + ops["name"].astype(str)).to_numpy(dtype=object), rep)
        for k, v in (("rank", rank), ("stage", stage), ("mb", mb), ("op", kind), ("s", s),
                     ("e", e), ("name", name), ("lane", np.full(n * rep, "action", dtype=object))):
            cols[k].append(v)
        d = e - s
        for op, parts in _CHUNK.items():
            sel = kind == op
            for lane, pname, a, b in parts:
                cols["rank"].append(rank[sel])
                cols["stage"].append(stage[sel])
                cols["mb"].append(mb[sel])
                cols["op"].append(np.full(sel.sum(), None, dtype=object))
                cols["s"].append(s[sel] + (a * d[sel]).astype(np.int64))
                cols["e"].append(s[sel] + (b * d[sel]).astype(np.int64))
                cols["name"].append(np.full(sel.sum(), pname, dtype=object))
                cols["lane"].append(np.full(sel.sum(), lane, dtype=object))
    c = {k: np.concatenate(v) for k, v in cols.items()}
    dur = c["e"] - c["s"]
    c["e"] = c["s"] + (dur * (1 - 0.04 * rng.random(len(dur)))).astype(np.int64)
    lane_code = c["lane"]
    is_action = lane_code == "action"
    lanes = np.where(is_action, "compute", pd.Series(lane_code).map(_LANES).to_numpy())
    kind = np.where(is_action, "action", np.where(lane_code == "p", "comm", "kernel"))
    sms = np.where(lane_code == "c", SMS - COMM_SMS, np.where(lane_code == "m", COMM_SMS, 0))
    pg = np.full(len(lane_code), None, dtype=object)
    pg[lane_code == "m"] = "ep"
    pg[lane_code == "p"] = "pp"
    df = pd.DataFrame({
        "rank": c["rank"].astype(np.int32), "lane": lanes, "kind": kind, "name": c["name"],
        "step": np.int32(step), "stage": c["stage"].astype(np.int32),
        "microbatch": c["mb"].astype(np.int32), "op": c["op"], "start_ns": c["s"],
        "end_ns": c["e"],
        "sms": pd.arrays.IntegerArray(sms.astype(np.int32),
                                      mask=(lane_code == "action") | (lane_code == "p")),
        "device": (c["rank"] % GPUS).astype(np.int32),
        "pg": pg,
    })
    marks = pd.DataFrame({"rank": np.arange(world, dtype=np.int32), "lane": "host",
                          "kind": "annotation", "name": f"ProfilerStep#{step}",
                          "step": np.int32(step), "start_ns": t0 + skew - 1000,
                          "end_ns": int(df["end_ns"].max()) + STEP_GAP_NS // 2})
    return pd.concat([df, marks], ignore_index=True).sort_values(["rank", "start_ns"],
                                                                kind="stable")


def _step_counters(spans: pd.DataFrame, t0: int, t1: int, world: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """Per GPU: rate x share of each 10 ms sample interval spent in communication."""
    comm = spans.loc[spans["lane"].isin(["comm", "pp_comm"])]
    g, s, e = union(comm["rank"].to_numpy(np.int64), comm["start_ns"].to_numpy(),
                    comm["end_ns"].to_numpy())
    span = t1 - t0 + 2 * COUNTER_DT_NS
    base = t0 - COUNTER_DT_NS
    ks = g * span + (s - base)
    length = e - s
    cum = np.cumsum(length) - length

    def busy(rank: np.ndarray, t: np.ndarray) -> np.ndarray:  # Σ comm time before t
        key = rank * span + (t - base)
        i = np.searchsorted(ks, key, side="right") - 1
        j = np.maximum(i, 0)
        return np.where(i >= 0, cum[j] + np.clip(key - ks[j], 0, length[j]), 0)

    ts = np.arange(t0 + COUNTER_DT_NS, t1 + 1, COUNTER_DT_NS)
    rank = np.repeat(np.arange(world), len(ts))
    t = np.tile(ts, world)
    share = (busy(rank, t) - busy(rank, t - COUNTER_DT_NS)) / COUNTER_DT_NS
    ib_rate = np.where(rank == STRAGGLER_RANK + 6, IB_BPS / 2, IB_BPS)  # a degraded port
    frames = []
    for device, rate in (("nvlink", NVLINK_BPS), ("ib", ib_rate)):
        for metric in ("tx_bytes_per_s", "rx_bytes_per_s"):
            gpu = rank % GPUS
            frames.append(pd.DataFrame({
                "ts_ns": t, "node": "node" + pd.Series(rank // GPUS).astype(str),
                "gpu": pd.array(gpu if device == "nvlink" else [None] * len(t), dtype="Int32"),
                "device": "nvlink" if device == "nvlink" else "ib:mlx5_" + pd.Series(gpu).astype(str) + ":1",
                "metric": metric,
                "value": share * rate * rng.normal(1.0, 0.02, len(t)).clip(0.9, 1.1),
            }))
    return pd.concat(frames, ignore_index=True)


def manifest(ranks: int, steps: int, microbatches: int) -> Manifest:
    return Manifest(
        source="synthetic", synthetic=True,
        description=f"SYNTHETIC benchmark run (bench/gen_synthetic_run.py): {ranks} ranks, PP {PP} "
                    f"DualPipe from profiler.simulate plus noise, {steps} steps; straggler rank "
                    f"{STRAGGLER_RANK if ranks > STRAGGLER_RANK else 'none'}",
        topology=Topology(nodes=ranks // GPUS, gpus_per_node=GPUS, sms_per_gpu=SMS,
                          gpu_name="H800 (synthetic)", nvlink_peak_bytes_per_s=200e9,
                          ib_peak_bytes_per_s=50e9),
        parallel=Parallel(world_size=ranks, pp=PP, ep=min(ranks, 64), dp=ranks // PP,
                          schedule="dualpipe", microbatches=microbatches),
        extra={"generator": "bench/gen_synthetic_run.py",
               "rank_nodes": {str(r): f"node{r // GPUS}" for r in range(ranks)}},
    )


def _split_write(writer_for, table: pa.Table, key: str) -> None:
    """Write ``table`` (sorted by ``key``) as one slice per key value."""
    values = table.column(key).to_numpy(zero_copy_only=False)
    cut = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(values)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        writer_for(values[a]).write(table.slice(a, b - a))


def write(out: Path, ranks: int, steps: int | None, microbatches: int, seed: int,
          quiet: bool = False) -> dict[str, float]:
    if ranks <= 0 or ranks % PP or ranks % GPUS:
        raise SystemExit(f"--ranks {ranks}: use a multiple of {PP} (PP {PP}, {GPUS} GPUs/node)")
    if out.exists():
        raise SystemExit(f"{out}: already exists; remove it or choose another --out")
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    sched = build("dualpipe", PP, microbatches)
    dp = ranks // PP
    if steps is None:
        probe = _step_spans(sched, 0, 0, 1, PP, np.zeros(PP, np.int64), rng)
        steps = max(1, math.ceil(SPANS_PER_RANK / (len(probe) / PP)))
    m = manifest(ranks, steps, microbatches)
    skew = rng.integers(0, 20_000, ranks)
    n_spans = n_ctr = 0
    t0 = 0
    with RunWriter(out, m, rotate_s=1e9, flush_s=1e9, batch_rows=1 << 30, fsync=False) as w:
        for step in range(steps):
            spans = _step_spans(sched, step, t0, dp, ranks, skew, rng)
            t1 = int(spans["end_ns"].max())
            ctr = _step_counters(spans, t0, t1, ranks, rng).sort_values("node", kind="stable")
            _split_write(lambda r: w.spans(int(r)), spans_table(spans), "rank")
            _split_write(lambda n: w.counters(str(n)), counters_table(ctr), "node")
            w.flush()
            n_spans += len(spans)
            n_ctr += len(ctr)
            t0 = t1 + STEP_GAP_NS
            if not quiet:
                print(f"step {step + 1}/{steps}: {n_spans:,} spans "
                      f"{time.perf_counter() - t_start:.1f} s", file=sys.stderr, flush=True)
        m.extra["bench"] = {"spans": n_spans, "counters": n_ctr, "steps": steps}
    return {"spans": n_spans, "counters": n_ctr, "steps": steps,
            "seconds": time.perf_counter() - t_start}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=None, help="default: ~10k spans per rank")
    ap.add_argument("--microbatches", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    st = write(a.out, a.ranks, a.steps, a.microbatches, a.seed, a.quiet)
    print(f"wrote {a.out}: {a.ranks} ranks, {st['steps']} steps, {st['spans']:,} spans, "
          f"{st['counters']:,} counter samples in {st['seconds']:.1f} s")


if __name__ == "__main__":
    main()
