"""``dualscope export --format perfetto``: Chrome trace JSON for ui.perfetto.dev."""

from __future__ import annotations

import gzip
import itertools
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from profiler.errors import InputError
from profiler.exporters.perfetto import (
    NODE_PID_BASE,
    assign_subtracks,
    to_chrome_trace,
    write_chrome_trace,
)
from profiler.manifest import Manifest
from profiler.store import RunReader, RunWriter

#: an epoch-sized run clock: a double holding it in µs could not keep ns precision
T0 = 1_740_461_679_123_456_789
RANKS = (0, 1, 2, 3)


def _rank_spans(rank: int) -> list[dict[str, Any]]:
    """Spans of one rank on every lane, with the cases the packer must handle: disjoint and
    touching kernels, a partial overlap on one stream, proper nesting on a host thread (with
    shared start / shared end / identical / zero-length children) and partial host overlaps."""
    t = T0 + rank * 1_000  # ranks a µs apart
    rows: list[dict[str, Any]] = []

    def add(lane: str, kind: str, name: str, a: int, b: int, **kw: Any) -> None:
        rows.append(dict(rank=rank, lane=lane, kind=kind, name=f"r{rank}:{name}",
                         start_ns=t + a, end_ns=t + b, **kw))

    # compute stream 7: disjoint, touching, then a partial overlap (k3 / k4)
    add("compute", "kernel", "k1", 0, 1_001, stream=7, device=rank, sms=112, op="F",
        stage=rank, microbatch=0, step=1, annotation="attn(F)")
    add("compute", "kernel", "k2", 1_001, 2_003, stream=7, device=rank, sms=112, op="F",
        stage=rank, microbatch=0, step=1)
    add("compute", "kernel", "k3", 3_000, 5_000, stream=7, device=rank, sms=132)
    add("compute", "kernel", "k4", 4_000, 6_000, stream=7, device=rank, sms=132)
    add("compute", "kernel", "k5", 4_500, 4_700, stream=7, device=rank, sms=8)  # inside k3 & k4
    # a second compute stream
    add("compute", "kernel", "k6", 3_500, 3_600, stream=23, device=rank, sms=112)
    # comm stream 27: overlaps compute (different track, fine) and itself partially
    add("comm", "kernel", "dispatch", 500, 2_500, stream=27, device=rank, sms=20,
        bytes=1 << 20, pg="ep")
    add("comm", "kernel", "combine", 2_400, 3_800, stream=27, device=rank, sms=20,
        bytes=1 << 20, pg="ep")
    # pipeline p2p: no stream
    add("pp_comm", "comm", "send", 100, 900, bytes=4096, op="F", stage=rank, microbatch=0)
    add("pp_comm", "comm", "recv", 950, 990, bytes=4096)
    # memory lane
    add("memory", "memcpy", "memcpy", 10, 20, stream=7, device=rank, bytes=131072)
    # host thread 100: nesting of every flavour
    add("host", "annotation", "PP:0F0", 0, 10_000, tid=100, op="F", stage=rank, microbatch=0,
        step=1)
    add("host", "cpu_op", "aten::mm", 0, 3_000, tid=100)  # shares the start
    add("host", "cpu_op", "aten::mm#same", 0, 3_000, tid=100)  # identical to its parent
    add("host", "cuda_runtime", "cudaLaunchKernel", 2_000, 3_000, tid=100)  # shares the end
    add("host", "cpu_op", "mark", 5_000, 5_000, tid=100)  # zero length
    add("host", "cpu_op", "tail", 10_000, 10_000, tid=100)  # zero length at the parent's end
    add("host", "cpu_op", "after", 10_000, 11_000, tid=100)  # touches the parent
    # host thread 200: partial overlaps (async ops)
    add("host", "cpu_op", "async_a", 0, 2_000, tid=200)
    add("host", "cpu_op", "async_b", 1_000, 3_000, tid=200)
    add("host", "cpu_op", "async_c", 1_500, 2_500, tid=200)
    add("host", "cpu_op", "async_d", 1_600, 1_700, tid=200)
    return rows


def _counters() -> list[dict[str, Any]]:
    rows = []
    for node, gpus in (("node-a", (0, 1)), ("node-b", (0, 1))):
        for i in range(5):
            ts = T0 + i * 1_000
            for gpu in gpus:
                rows.append(dict(ts_ns=ts, node=node, gpu=gpu, device="nvlink",
                                 metric="tx_bytes_per_s", value=1e9 * (i + 1)))
                rows.append(dict(ts_ns=ts, node=node, gpu=gpu, device="sm",
                                 metric="sm_comm_ratio", value=20 / 132))
            rows.append(dict(ts_ns=ts, node=node, gpu=None, device="ib:mlx5_0:1",
                             metric="rx_bytes_per_s", value=float("nan") if i == 2 else 5e9))
    return rows


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    with RunWriter(run, Manifest(source="synthetic", synthetic=True), fsync=False) as w:
        for rank in RANKS:
            w.write_spans(pd.DataFrame(_rank_spans(rank)))
        counters = pd.DataFrame(_counters())
        for node, part in counters.groupby("node"):
            w.counters(str(node)).write(part.reset_index(drop=True))
    return run


def _all_spans() -> pd.DataFrame:
    return pd.DataFrame([r for rank in RANKS for r in _rank_spans(rank)])


# -- helpers -------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return orjson.loads(data)


def _x(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def _meta(trace: dict[str, Any], name: str) -> dict[tuple[int, int], Any]:
    return {(e["pid"], e["tid"]): e["args"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == name}


def _crossing(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True when a and b overlap without one containing the other (Perfetto drops one)."""
    (s1, e1), (s2, e2) = a, b
    if (s2 <= s1 and e1 <= e2) or (s1 <= s2 and e2 <= e1):
        return False
    if s1 == e1 or s2 == e2:  # a zero-length slice not inside the other one is outside it
        return False
    return max(s1, s2) < min(e1, e2)


def _assert_no_crossing(trace: dict[str, Any]) -> None:
    base = trace["otherData"]["dualscope"]["ts_base_ns"]
    by_track: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for e in _x(trace):
        s = base + round(e["ts"] * 1000)
        by_track[(e["pid"], e["tid"])].append((s, s + round(e["dur"] * 1000)))
    for track, spans in by_track.items():
        for a, b in itertools.combinations(spans, 2):
            assert not _crossing(a, b), f"{track}: {a} and {b} overlap without nesting"


def _export(python: str, cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "dualscope", "export", *args], env=cli_env,
                          capture_output=True, text=True, timeout=120)


# -- the pure exporter ------------------------------------------------------------------------


def test_every_span_exported_once_with_ns_precision() -> None:
    spans = _all_spans()
    trace = to_chrome_trace(spans, None, Manifest(source="synthetic"))
    xs = _x(trace)
    assert Counter(e["name"] for e in xs) == Counter(spans["name"])  # names are unique ids
    assert len(xs) == len(spans)
    base = trace["otherData"]["dualscope"]["ts_base_ns"]
    assert base % 1_000_000_000 == 0 and base <= spans["start_ns"].min()
    want = spans.set_index("name")
    for e in xs:
        row = want.loc[e["name"]]
        assert e["pid"] == row["rank"]
        assert base + round(e["ts"] * 1000) == row["start_ns"]  # Perfetto: llround(ts * 1000)
        assert round(e["dur"] * 1000) == row["end_ns"] - row["start_ns"]
    assert "displayTimeUnit" not in trace  # Perfetto would read "ns" as the unit of ts


def test_no_crossing_slices_and_nesting_kept_on_one_track() -> None:
    trace = to_chrome_trace(_all_spans(), None)
    _assert_no_crossing(trace)
    names = _meta(trace, "thread_name")
    track_of = {e["name"]: names[(e["pid"], e["tid"])]["name"] for e in _x(trace)}
    # proper nesting (shared start/end, identical, zero-length) stays on the thread's track
    for child in ("PP:0F0", "aten::mm", "aten::mm#same", "cudaLaunchKernel", "mark", "tail",
                  "after"):
        assert track_of[f"r0:{child}"] == "host · tid 100"
    # partial overlaps move to an overlap track of the same stream / thread
    assert track_of["r0:k3"] == "compute · stream 7"
    assert track_of["r0:k4"] == "compute · stream 7 · overlap 1"
    assert track_of["r0:combine"] == "comm · stream 27 · overlap 1"
    assert track_of["r0:async_b"] == "host · tid 200 · overlap 1"
    assert track_of["r0:async_c"] == "host · tid 200 · overlap 1"  # crosses a, inside b
    assert track_of["r0:async_d"] == "host · tid 200"  # first fit: inside async_a
    assert track_of["r0:send"] == "pp_comm"
    assert track_of["r0:memcpy"] == "memory · stream 7"


def test_metadata_names_and_sort_order() -> None:
    trace = to_chrome_trace(_all_spans(), pd.DataFrame(_counters()))
    procs = _meta(trace, "process_name")
    for r in RANKS:
        assert procs[(r, 0)] == {"name": f"rank {r}"}
        assert _meta(trace, "process_sort_index")[(r, 0)] == {"sort_index": r}
    assert procs[(NODE_PID_BASE, 0)] == {"name": "node node-a"}
    assert procs[(NODE_PID_BASE + 1, 0)] == {"name": "node node-b"}
    threads = _meta(trace, "thread_name")
    sort = _meta(trace, "thread_sort_index")
    rank0 = sorted((sort[k]["sort_index"], v["name"]) for k, v in threads.items() if k[0] == 0)
    assert [n for _, n in rank0] == [
        "compute · stream 7", "compute · stream 7 · overlap 1", "compute · stream 23",
        "comm · stream 27", "comm · stream 27 · overlap 1", "pp_comm", "memory · stream 7",
        "host · tid 100", "host · tid 200", "host · tid 200 · overlap 1",
    ]
    # every X event sits on a named thread
    assert all((e["pid"], e["tid"]) in threads for e in _x(trace))


def test_args_carry_schema_fields_where_not_null() -> None:
    xs = {e["name"]: e for e in _x(to_chrome_trace(_all_spans(), None))}
    assert xs["r1:k1"]["args"] == {"kind": "kernel", "op": "F", "stage": 1, "microbatch": 0,
                                   "step": 1, "sms": 112, "annotation": "attn(F)"}
    assert xs["r1:k1"]["cat"] == "kernel"
    assert xs["r1:dispatch"]["args"] == {"kind": "kernel", "sms": 20, "bytes": 1 << 20,
                                         "pg": "ep"}
    assert xs["r1:mark"]["args"] == {"kind": "cpu_op"}


def test_counters_as_c_events_one_track_per_gpu_device_metric() -> None:
    counters = pd.DataFrame(_counters())
    trace = to_chrome_trace(None, counters)
    cs = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert len(cs) == int(counters["value"].notna().sum())  # the NaN sample is left out
    tracks = {(e["pid"], e["name"], *e["args"]) for e in cs}
    assert tracks == {
        (NODE_PID_BASE + i, name, metric)
        for i in (0, 1)
        for name, metric in (("gpu0 nvlink", "tx_bytes_per_s"), ("gpu1 nvlink", "tx_bytes_per_s"),
                             ("gpu0 sm", "sm_comm_ratio"), ("gpu1 sm", "sm_comm_ratio"),
                             ("ib:mlx5_0:1", "rx_bytes_per_s"))
    }
    base = trace["otherData"]["dualscope"]["ts_base_ns"]
    assert sorted({base + round(e["ts"] * 1000) for e in cs}) == [T0 + i * 1000 for i in range(5)]


def test_empty_input_gives_an_empty_trace() -> None:
    assert to_chrome_trace(None, None)["traceEvents"] == []


# -- sub-track packing -----------------------------------------------------------------------


def test_assign_subtracks_random_against_brute_force() -> None:
    rng = np.random.default_rng(7)
    for _ in range(3000):
        n = int(rng.integers(1, 9))
        group = rng.integers(0, 2, n)
        start = rng.integers(0, 12, n)
        end = start + rng.integers(0, 6, n)
        sub = assign_subtracks(group, start, end)
        for i, j in itertools.combinations(range(n), 2):
            if group[i] == group[j] and sub[i] == sub[j]:
                assert not _crossing((start[i], end[i]), (start[j], end[j])), (start, end, sub)
        laminar = [
            not any(_crossing((start[i], end[i]), (start[j], end[j]))
                    for i, j in itertools.combinations(np.flatnonzero(group == g), 2))
            for g in (0, 1)
        ]
        for g in (0, 1):
            if laminar[g]:
                assert (sub[group == g] == 0).all()  # nesting never leaves its track


def test_assign_subtracks_first_fit_reuses_tracks() -> None:
    # a staircase of partial overlaps needs two tracks, not one per span
    start = np.arange(0, 100, 10)
    sub = assign_subtracks(np.zeros(10), start, start + 15)
    assert sub.tolist() == [0, 1] * 5


def test_assign_subtracks_rejects_bad_spans() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        assign_subtracks([0], [10], [5])


def test_write_is_atomic_and_refuses_existing(tmp_path: Path) -> None:
    out = tmp_path / "t.json"

    def boom():
        yield {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "x"}}
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError):
        write_chrome_trace(out, boom())
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary left behind
    assert write_chrome_trace(out, iter([])) == 0
    assert _load(out) == {"traceEvents": [], "otherData": {}}
    with pytest.raises(InputError, match="already exists"):
        write_chrome_trace(out, iter([]))
    with pytest.raises(InputError, match="does not exist"):
        write_chrome_trace(tmp_path / "nope" / "t.json", iter([]))


# -- the command -----------------------------------------------------------------------------


def test_cli_export_whole_run(run_dir: Path, tmp_path: Path, python: str,
                              cli_env: dict[str, str]) -> None:
    out = tmp_path / "trace.json"
    res = _export(python, cli_env, str(run_dir), "--format", "perfetto", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "spans of 4 rank(s)" in res.stdout
    trace = _load(out)
    spans = RunReader(run_dir).spans()
    assert Counter(e["name"] for e in _x(trace)) == Counter(spans["name"])
    assert {e["pid"] for e in _x(trace)} == set(RANKS)
    _assert_no_crossing(trace)
    cs = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert len(cs) == int(RunReader(run_dir).counters()["value"].notna().sum())
    assert {e["pid"] for e in cs} == {NODE_PID_BASE, NODE_PID_BASE + 1}
    assert trace["otherData"]["dualscope"]["ranks"] == "0-3"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_ranks_window_gzip(run_dir: Path, tmp_path: Path, python: str,
                               cli_env: dict[str, str]) -> None:
    out = tmp_path / "part.json.gz"
    lo, hi = T0 + 3_000, T0 + 4_600  # ns on the run clock
    res = _export(python, cli_env, str(run_dir), "--out", str(out), "--ranks", "0,2-3",
                  "--window", f"{lo}:{hi}", "--gzip")
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    trace = _load(out)
    spans = _all_spans()
    keep = spans[spans["rank"].isin([0, 2, 3]) & (spans["end_ns"] >= lo)
                 & (spans["start_ns"] < hi)]
    assert Counter(e["name"] for e in _x(trace)) == Counter(keep["name"])
    assert {e["pid"] for e in _x(trace)} == {0, 2, 3}
    assert {p for (p, _t) in _meta(trace, "process_name") if p < NODE_PID_BASE} == {0, 2, 3}
    base = trace["otherData"]["dualscope"]["ts_base_ns"]
    cs = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert cs and all(lo <= base + round(e["ts"] * 1000) < hi for e in cs)
    _assert_no_crossing(trace)

    res = _export(python, cli_env, str(run_dir), "--out", str(tmp_path / "nc.json"),
                  "--no-counters", "--window", f"{lo}:")
    assert res.returncode == 0, res.stderr
    assert not [e for e in _load(tmp_path / "nc.json")["traceEvents"] if e["ph"] == "C"]


def test_cli_existing_out_needs_force(run_dir: Path, tmp_path: Path, python: str,
                                      cli_env: dict[str, str]) -> None:
    out = tmp_path / "trace.json"
    out.write_text("keep me")
    res = _export(python, cli_env, str(run_dir), "--out", str(out))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "already exists" in res.stderr
    assert str(out) in res.stderr and "--force" in res.stderr
    assert out.read_text() == "keep me"
    res = _export(python, cli_env, str(run_dir), "--out", str(out), "--force", "--ranks", "1")
    assert res.returncode == 0, res.stderr
    assert {e["pid"] for e in _x(_load(out))} == {1}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ranks", "0,x", "'x' is not a rank"),
        ("--ranks", "5-2", "'5-2' is not a valid range"),
        ("--ranks", "-1", "is not a rank or a range"),
        ("--ranks", "0,7-9", "rank(s) 7-9 not in the run (it has 0-3)"),
        ("--window", "100", "expected START_NS:END_NS"),
        ("--window", "a:b", "must be integers"),
        ("--window", "500:100", "END_NS (100) must be after START_NS (500)"),
        ("--window", ":", "give at least START_NS or END_NS"),
    ],
)
def test_cli_bad_options_exit_2(run_dir: Path, tmp_path: Path, python: str,
                                cli_env: dict[str, str], option: str, value: str,
                                message: str) -> None:
    out = tmp_path / "t.json"
    res = _export(python, cli_env, str(run_dir), "--out", str(out), option, value)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("dualscope: error:")
    assert f"{option} {value!r}" in line and message in line
    assert not out.exists()


def test_cli_not_a_run_exit_2(tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    res = _export(python, cli_env, str(tmp_path / "missing"), "--out", str(tmp_path / "t.json"))
    assert res.returncode == 2
    assert "no such run directory" in res.stderr
