"""``dualscope analyze`` end to end: a run written with RunWriter, analysed in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.commands.analyze_cmd import parse_ranks
from profiler.errors import InputError
from profiler.manifest import Manifest, Parallel, Topology
from profiler.store import RunWriter

F_NS, B_NS = 100_000, 200_000


def write_toy_run(path: Path, *, pp: int = 4, dp: int = 2, gpus_per_node: int = 2,
                  microbatches: int = 4, steps: int = 2, slow_rank: int | None = None,
                  offsets: dict[int, int] | None = None) -> Path:
    """A GPipe-timed run: rank r = pp_rank * dp + pipeline; every F/B action has a compute
    kernel (112 SMs) and a dispatch/combine kernel (20 SMs, ending when the slowest
    participant of its stage's all-to-all gets there), forward sends stage s -> s+1 and
    backward sends s -> s-1 with 10 us latency, and a ProfilerStep#N annotation. Every bubble
    is (pp-1)(F+B). ``offsets`` skews each rank's recorded clock (recorded = true - offset);
    ``slow_rank`` runs its forwards at half speed."""
    offsets = offsets or {}
    world, m = pp * dp, microbatches
    period = (pp - 1 + m) * (F_NS + B_NS) + 500_000
    rank = np.arange(world)
    s = rank // dp
    rows = []
    for step in range(steps):
        t0 = 1_000_000 + step * period
        tf = t0 + (pp - 1 + m) * F_NS
        for mb in range(m):
            f_start = t0 + (s + mb) * F_NS
            f_dur = np.where(rank == slow_rank, 2 * F_NS, F_NS)
            b_start = tf + ((pp - 1 - s) + mb) * B_NS
            for op, st, dur in (("F", f_start, f_dur), ("B", b_start, np.full(world, B_NS))):
                rows.append(pd.DataFrame({"rank": rank, "step": step, "stage": s,
                                          "microbatch": mb, "op": op, "start_ns": st,
                                          "end_ns": st + dur}))
    ops = pd.concat(rows, ignore_index=True)
    d = ops["end_ns"] - ops["start_ns"]
    comm_end = (ops["start_ns"] + d * 9 // 10).groupby(
        [ops["step"], ops["stage"], ops["op"], ops["microbatch"]]).transform("max")
    fwd = ops["op"] == "F"
    parts = [
        ops.assign(lane="compute", kind="action",
                   name="PP:" + ops["stage"].astype(str) + ops["op"] + ops["microbatch"].astype(str)),
        ops.assign(lane="compute", kind="kernel", name="gemm", sms=112,
                   start_ns=ops["start_ns"] + d // 10, end_ns=ops["start_ns"] + d * 6 // 10,
                   op=None),
        ops.assign(lane="comm", kind="kernel", name=np.where(fwd, "dispatch(F)", "combine(B)"),
                   sms=20, pg="ep" + ops["stage"].astype(str),
                   start_ns=ops["start_ns"] + d * 6 // 10, end_ns=comm_end, op=None),
    ]
    sends = ops.loc[(fwd & (ops["stage"] < pp - 1)) | (~fwd & (ops["stage"] > 0))]
    to = np.where(sends["op"] == "F", dp, -dp)
    parts.append(sends.assign(lane="pp_comm", kind="comm", name="send",
                              start_ns=sends["end_ns"], end_ns=sends["end_ns"] + 10_000))
    parts.append(sends.assign(lane="pp_comm", kind="comm", name="recv",
                              rank=sends["rank"] + to,
                              stage=sends["stage"] + np.where(sends["op"] == "F", 1, -1),
                              start_ns=sends["end_ns"] - 50_000, end_ns=sends["end_ns"] + 10_000))
    for step in range(steps):
        t0 = 1_000_000 + step * period
        parts.append(pd.DataFrame({"rank": rank, "lane": "host", "kind": "annotation",
                                   "name": f"ProfilerStep#{step}", "start_ns": t0 - 10_000,
                                   "end_ns": t0 + period - 20_000}))
    spans = pd.concat(parts, ignore_index=True)
    spans.loc[spans["lane"] == "host", "step"] = np.nan  # inferred from the annotation
    shift = spans["rank"].map(offsets).fillna(0).astype(np.int64)
    spans["start_ns"] -= shift
    spans["end_ns"] -= shift

    nodes = world // gpus_per_node
    ts = np.arange(0, 1_000_000 + steps * period, 100_000)
    ctr = []
    for n in range(nodes):
        for g in range(gpus_per_node):
            ctr.append(pd.DataFrame({"ts_ns": ts, "node": f"node{n}", "gpu": g,
                                     "device": "nvlink", "metric": "tx_bytes_per_s",
                                     "value": 100e9}))
        ctr.append(pd.DataFrame({"ts_ns": ts, "node": f"node{n}", "gpu": None,
                                 "device": "ib:mlx5_0:1", "metric": "rx_bytes_per_s",
                                 "value": 25e9}))
    counters = pd.concat(ctr, ignore_index=True)
    counters["gpu"] = counters["gpu"].astype("Int32")
    manifest = Manifest(
        source="synthetic", synthetic=True,
        topology=Topology(nodes=nodes, gpus_per_node=gpus_per_node, sms_per_gpu=132,
                          nvlink_peak_bytes_per_s=200e9, ib_peak_bytes_per_s=50e9),
        parallel=Parallel(world_size=world, pp=pp, dp=dp, schedule="gpipe",
                          microbatches=m))
    with RunWriter(path, manifest, fsync=False) as w:
        w.write_spans(spans.sort_values(["rank", "start_ns"]))
        for node, part in counters.groupby("node"):
            w.counters(str(node)).write(part)
    return path


def _analyze(cli_env, python, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "dualscope", "analyze", *args], env=cli_env,
                          capture_output=True, text=True, timeout=120)


def _check_gpipe_bubbles(bubbles: pd.DataFrame, ranks: list[int], pp: int = 4, dp: int = 2):
    b = bubbles.loc[bubbles["rank"].isin(ranks)]
    assert len(b) == 2 * len(ranks)  # two steps each
    assert (b["window_ns"] == (pp - 1 + 4) * (F_NS + B_NS)).all()
    assert (b["bubble_ns"] == (pp - 1) * (F_NS + B_NS)).all()
    s = b["rank"] // dp
    assert (b["warmup_ns"] == (pp - 1) * F_NS + (pp - 1 - s) * B_NS).all()
    assert (b["cooldown_ns"] == s * B_NS).all() and (b["steady_ns"] == 0).all()


def test_analyze_json_known_answers(tmp_path, cli_env, python):
    run = write_toy_run(tmp_path / "run", slow_rank=5)
    out = _analyze(cli_env, python, str(run), "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    bubbles = pd.DataFrame(res["bubbles"])
    assert sorted(bubbles["step"].unique()) == [0, 1]  # from ProfilerStep#N
    _check_gpipe_bubbles(bubbles, ranks=[0, 2, 4, 6])  # pipeline 0 has no straggler
    assert [r["rank"] for r in res["stragglers"]] == [5]
    assert res["stragglers"][0]["slowdown"] == pytest.approx(2.0)
    sm = pd.DataFrame(res["sm_seconds"]).set_index("rank")
    assert sm.loc[0, "comm_sms_max"] == 20
    assert sm.loc[0, "comm_sm_s"] == pytest.approx(20 * 2 * 4 * 0.3 * (F_NS + B_NS) / 1e9)
    bw = pd.DataFrame(res["link_bandwidth"])
    nv = bw.loc[bw["device"] == "nvlink"]
    assert len(nv) == 8 and np.allclose(nv["mean_share_of_peak"], 0.5)
    phases = {r["phase"] for r in res["bandwidth_phase_summary"]}
    assert "none" in phases and any("dispatch" in p for p in phases)
    ov = pd.DataFrame(res["overlap"])
    assert (ov["overlap_ratio"] < 1).all() and (ov["exposed_comm_ns"] > 0).all()
    assert all(s["available"] for s in res["status"])
    assert "clock_offsets" not in res


def test_analyze_align_recovers_offsets_and_bubbles(tmp_path, cli_env, python):
    offsets = {0: 0, 1: 7_000, 2: -35_000, 3: 12_345, 4: 250_000, 5: -3, 6: 99_999, 7: -77_777}
    run = write_toy_run(tmp_path / "run", offsets=offsets)
    raw = json.loads(_analyze(cli_env, python, str(run), "--json").stdout)
    assert pd.DataFrame(raw["bubbles"])["bubble_ns"].max() > 3 * (F_NS + B_NS)  # skewed
    out = _analyze(cli_env, python, str(run), "--json", "--align")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    got = {r["rank"]: r["offset_ns"] for r in res["clock_offsets"]}
    assert got == offsets
    _check_gpipe_bubbles(pd.DataFrame(res["bubbles"]), ranks=list(range(8)))


def test_analyze_readable_output_and_rank_filter(tmp_path, cli_env, python):
    run = write_toy_run(tmp_path / "run", slow_rank=5)
    out = _analyze(cli_env, python, str(run), "--ranks", "0-3,5", "--top", "3")
    assert out.returncode == 0, out.stderr
    for title in ("bubbles per pipeline position", "most exposed communication",
                  "SM-seconds per GPU", "link bandwidth", "stragglers"):
        assert title in out.stdout
    res = json.loads(_analyze(cli_env, python, str(run), "--ranks", "0-3,5", "--json").stdout)
    assert sorted({r["rank"] for r in res["overlap"]}) == [0, 1, 2, 3, 5]


def test_analyze_errors_name_the_bad_value(tmp_path, cli_env, python):
    run = write_toy_run(tmp_path / "run")
    out = _analyze(cli_env, python, str(run), "--ranks", "0-3,99")
    assert out.returncode == 2 and "ranks [99] are not in" in out.stderr
    out = _analyze(cli_env, python, str(run), "--scheduler", "tcp://127.0.0.1:1")
    assert out.returncode == 2 and "--scheduler needs --engine dask" in out.stderr
    out = _analyze(cli_env, python, str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such run directory" in out.stderr


def test_parse_ranks():
    assert parse_ranks("0-2,7,5-5") == [0, 1, 2, 5, 7]
    assert parse_ranks(None) is None
    for bad in ("a", "3-1", "1,,2"):
        with pytest.raises(InputError, match="--ranks"):
            parse_ranks(bad)
