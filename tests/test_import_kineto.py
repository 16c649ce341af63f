"""Unit tests of the Kineto importer's parts: comm classification, labels, interval lookup,
chunked JSON parsing, the clock, and the span mapping on small edge-case fixtures."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest

from profiler.classify import classify_kernels, host_comm_lane, name_evidence
from profiler.engine import analyze_run
from profiler.errors import InputError
from profiler.importers import import_kineto
from profiler.importers.discover import load_trace, rank_from_filename
from profiler.importers.jsonscan import KEPT_KEYS, Window, find_events, iter_event_chunks
from profiler.importers.kineto import to_ns
from profiler.importers.labels import IntervalIndex, Label, parse_label, parse_step
from profiler.store import RunReader

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kineto"
BASE = 1_700_000_000_000_000_000


# -- classification ------------------------------------------------------------------------

def test_name_evidence() -> None:
    assert name_evidence("ncclDevKernel_AllGather_RING_LL(x)") == "strong"
    assert name_evidence("void dpsk::ep::internode::combine<false>(int)") == "strong"
    assert name_evidence("void deep_ep::intranode::dispatch<8>(int)") == "strong"
    assert name_evidence("void moe_combine_kernel(float*)") == "weak"
    assert name_evidence("void cutlass::device_kernel<gemm>()") == "compute"
    assert name_evidence("void my_ep::sync_flags(int*)") == "neutral"


def test_weak_name_needs_a_comm_stream() -> None:
    names = ["moe_combine_kernel", "sm90_gemm", "sm90_gemm", "sm90_gemm"]
    c = classify_kernels(names, [(0, 7)] * 4, [64, 132, 132, 132])
    assert not c.is_comm.any()
    assert c.reason[0] == "weak-name-off-comm-stream"
    assert c.comm_streams == frozenset()


def test_comm_stream_rules() -> None:
    names = ["ncclDevKernel_AllToAll", "custom_all_to_all_kernel", "sync_flags", "sm90_gemm_small",
             "ncclKernel_AllReduce", "big_unknown_kernel", "ncclDevKernel_Broadcast"]
    stream = [(0, 20)] * 7
    blocks = [24, 16, 4, 8, 8, 1000, 2]
    c = classify_kernels(names, stream, blocks, sms_per_gpu=132)
    assert list(c.reason) == ["strong-name", "name+stream", "helper-on-comm-stream",
                              "compute-name", "strong-name", "large-on-comm-stream", "strong-name"]
    assert list(c.is_comm) == [True, True, True, False, True, False, True]
    assert c.comm_streams == frozenset({(0, 20)})
    assert c.stream_comm_share[(0, 20)] == pytest.approx(4 / 7)
    # the same kernels with one comm kernel fewer: exactly half is not a majority
    c = classify_kernels(names[:-1], stream[:-1], blocks[:-1])
    assert c.comm_streams == frozenset()
    assert list(c.reason[[1, 2]]) == ["weak-name-off-comm-stream", "default"]


def test_stream_majority_is_strict_and_pg_and_patterns() -> None:
    names = ["ncclDevKernel_SendRecv", "helper", "helper2", "helper3"]
    c = classify_kernels(names, ["s"] * 4, [2, 1, 1, 1])
    assert c.comm_streams == frozenset()  # 1 of 4
    assert list(c.is_comm) == [True, False, False, False]
    c = classify_kernels(["plain_kernel", "other"], ["a", "b"], None, [True, False])
    assert list(c.reason) == ["pg", "default"]
    c = classify_kernels(["fused_rs_kernel", "sm90_gemm"], ["a", "a"], [8, 8],
                         comm_patterns=[r"fused_rs"])
    assert list(c.reason) == ["pattern", "default"]  # 1 of 2: not a comm stream
    with pytest.raises(ValueError, match="not a valid regular expression"):
        classify_kernels(["x"], ["a"], comm_patterns=["("])
    empty = classify_kernels([], [], None)
    assert len(empty.is_comm) == 0


def test_host_comm_lane() -> None:
    assert host_comm_lane("gloo:send") == "pp_comm"
    assert host_comm_lane("c10d::recv_") == "pp_comm"
    assert host_comm_lane("gloo:all_to_all") == "comm"
    assert host_comm_lane("c10d::allreduce_") == "comm"
    assert host_comm_lane("record_param_comms", "send") == "pp_comm"
    assert host_comm_lane("record_param_comms", "all_to_all") == "comm"
    assert host_comm_lane("aten::mm") is None


# -- labels and interval lookup --------------------------------------------------------------

@pytest.mark.parametrize(("name", "label"), [
    ("PP:0F3", Label("F", 0, 3, "compute")),
    ("PP:3I0", Label("I", 3, 0, "compute")),
    ("PP:3W0", Label("W", 3, 0, "compute")),
    ("PP:1B2", Label("B", 1, 2, "compute")),
    ("PP:(0F3;3B1)OVERLAP_F_B", Label("FB", 0, 3, "compute")),
    ("PP:(3B1;0F3)OVERLAP_F_B", Label("FB", 0, 3, "compute")),
    ("PP:0SEND_F1", Label("F", 0, 1, "pp_comm")),
    ("PP:2RECV_B0", Label("B", 2, 0, "pp_comm")),
    ("PP:1UNSHARD", Label(None, 1, None, "other")),
    ("Forward 2", Label("F", None, 2, "compute")),
    ("dispatch(F)", Label("F", None, None, "comm")),
    ("mlp(B)", Label("B", None, None, "compute")),
    ("attn(W)", Label("W", None, None, "compute")),
    ("1F1B", None),
    ("PP:garbage", None),
    ("ProfilerStep#4", None),
])
def test_parse_label(name: str, label: Label | None) -> None:
    assert parse_label(name) == label


def test_parse_step() -> None:
    assert parse_step("ProfilerStep#12") == 12
    assert parse_step("ProfilerStep#") is None


def _nested(rng: random.Random, lo: int, hi: int, depth: int, out: list[tuple[int, int]]) -> None:
    t = lo
    while depth and t < hi - 4 and rng.random() < 0.8:
        a = rng.randint(t, hi - 2)
        b = rng.randint(a, min(hi, a + (hi - lo) // 2))
        out.append((a, b))
        _nested(rng, a, b, depth - 1, out)
        t = b + 1


def test_interval_index_matches_brute_force() -> None:
    rng = random.Random(7)
    groups, starts, ends = [], [], []
    for g in range(3):
        iv: list[tuple[int, int]] = []
        _nested(rng, 0, 10_000, 5, iv)
        groups += [g] * len(iv)
        starts += [a for a, _ in iv]
        ends += [b for _, b in iv]
    index = IntervalIndex(np.array(groups), np.array(starts), np.array(ends))
    qg = np.array([rng.randrange(4) for _ in range(3000)])
    qt = np.array([rng.randrange(-5, 10_005) for _ in range(3000)])
    got = index.stab(qg, qt)
    for g, t, hit in zip(qg.tolist(), qt.tolist(), got.tolist(), strict=True):
        inside = [i for i in range(len(starts)) if groups[i] == g and starts[i] <= t <= ends[i]]
        if not inside:
            assert hit == -1
        else:  # innermost: the latest start (nesting), ties broken by the earliest end
            best = max(inside, key=lambda i: (starts[i], -ends[i]))
            assert (starts[hit], ends[hit]) == (starts[best], ends[best])
    parents = index.parents()
    for i, p in enumerate(parents.tolist()):
        if p >= 0:
            assert starts[p] <= starts[i] and ends[i] <= ends[p] and groups[p] == groups[i]


# -- chunked JSON ----------------------------------------------------------------------------

def _doc(n: int) -> dict:
    events = []
    for i in range(n):
        events.append({"ph": "X", "cat": "cpu_op", "name": "op}, {" + str(i) + '"]', "ts": i, "dur": 1,
                       "args": {"nested": [{"a": 1}, {"b": [2, {"c": 3}]}], "s": "}, {"}})
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0}, {"id": 1}],
            "traceEvents": events, "distributedInfo": {"rank": 3, "pg_config": [{"ranks": [0, 1]}]},
            "baseTimeNanoseconds": 5}


_ANY = msgspec.json.Decoder(list).decode


def _chunks(buf: bytes | bytearray, chunk_bytes: int, block: int = 0) -> tuple[list[list], dict]:
    """Chunks and kept keys, from memory or (``block``) streamed a few kB at a time."""
    win = Window(io.BytesIO(buf), block=block) if block else Window.of(buf)
    lay = find_events(win)
    chunks = list(iter_event_chunks(win, lay, _ANY, chunk_bytes=chunk_bytes))
    return chunks, {k: msgspec.json.decode(v) for k, v in lay.keys.items()}


def _kept(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k in KEPT_KEYS}


@pytest.mark.parametrize("option", [0, orjson.OPT_INDENT_2])
def test_chunks_equal_whole_parse(option: int) -> None:
    doc = _doc(3000)
    raw = orjson.dumps(doc, option=option)
    for block in (0, 5000, 1 << 20):  # in memory, and streamed in small and large blocks
        chunks, meta = _chunks(raw, 4096, block)
        assert meta == _kept(doc) and meta
        assert len(chunks) > 20
        assert [e for c in chunks for e in c] == doc["traceEvents"]


def test_log_arrays_after_the_events_are_chunked() -> None:
    """Kineto writes other keys, arrays of log entries among them, after traceEvents: the
    end of the array is where the decoders find it, not the last ']' of the file."""
    doc = _doc(3000)
    logs = [{"msg": f"warn ]}} {i}", "ts": [i, "]"]} for i in range(2000)]
    doc = {"traceEvents": doc["traceEvents"], "INFO": logs, "ERROR": [["]", "]]"]] * 500,
           "traceName": "x]", "baseTimeNanoseconds": 5}
    raw = orjson.dumps(doc)
    for block in (0, 3000):
        chunks, meta = _chunks(raw, 4096, block)
        assert len(chunks) > 20
        assert [e for c in chunks for e in c] == doc["traceEvents"]
        assert meta == {"baseTimeNanoseconds": 5}


def test_key_order_and_bare_array() -> None:
    doc = _doc(500)
    events = doc.pop("traceEvents")
    reordered = {"INFO": [["traceEvents", "]"]] * 100, "nested": {"traceEvents": [1]}, **doc,
                 "traceEvents": events, "after": {"a": [events[0]]}}
    for block in (0, 1000):
        chunks, meta = _chunks(orjson.dumps(reordered), 2048, block)
        assert [e for c in chunks for e in c] == events
        assert meta == _kept(reordered)
        chunks, meta = _chunks(orjson.dumps(events) + b"\n", 2048, block)
        assert [e for c in chunks for e in c] == events and meta == {}


def test_broken_json_inside_the_events_is_reported(tmp_path: Path) -> None:
    raw = orjson.dumps(_doc(500))
    cut = raw.index(b'"name"', len(raw) // 2)
    path = tmp_path / "rank0.json"
    path.write_bytes(raw[:cut] + b'"oops' + raw[cut:])  # unbalanced quote mid-array
    with pytest.raises(InputError, match="rank0.json: invalid or truncated JSON"):
        import_kineto([path], tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.json"]


def test_names_full_of_separators_are_still_chunked(tmp_path: Path) -> None:
    """Names full of '}, {' defeat the cut search; the scanner that tracks nesting and
    strings finds the cuts, so the file is still read a chunk at a time."""
    fake = "}, {" * 12
    events = [{"ph": "X", "cat": "user_annotation", "name": f"step {fake} {i}", "pid": 1,
               "tid": 1, "ts": i, "dur": 1} for i in range(40_000)]
    raw = orjson.dumps({"traceEvents": events, "distributedInfo": {"rank": 0, "world_size": 1}})
    assert len(raw) > 3 << 20
    for block in (0, 1 << 20):
        chunks, _ = _chunks(raw, 1 << 20, block)
        assert len(chunks) >= 3 and [e for c in chunks for e in c] == events
    path = tmp_path / "rank0.json"
    path.write_bytes(raw)
    summary = import_kineto([path], tmp_path / "run")
    assert summary.ranks[0].spans == 40_000


def test_load_trace_variants(tmp_path: Path) -> None:
    doc = _doc(10)
    (tmp_path / "a.json").write_bytes(orjson.dumps(doc["traceEvents"]))  # bare array
    src = load_trace(tmp_path / "a.json")
    got = [e for _, c in src.chunks() for e in c]
    assert [(e.name, msgspec.json.decode(e.ts)) for e in got] == [(e["name"], e["ts"]) for e in doc["traceEvents"]]
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(orjson.dumps(doc)))
    src = load_trace(tmp_path / "b.json.gz")
    for _ in src.chunks():
        pass
    assert src.meta.distributed["rank"] == 3
    (tmp_path / "c.json").write_bytes(b'{"traceEvents": [ ]}')
    with pytest.raises(InputError, match="traceEvents is empty"):
        load_trace(tmp_path / "c.json")


def test_rank_from_filename() -> None:
    assert rank_from_filename(Path("rank3.json")) == 3
    assert rank_from_filename(Path("trace_rank_12.pt.trace.json")) == 12
    assert rank_from_filename(Path("x-rank-7.json.gz")) == 7
    assert rank_from_filename(Path("frank1.json")) is None
    assert rank_from_filename(Path("trace.json")) is None


# -- clock -----------------------------------------------------------------------------------

def test_to_ns_exact() -> None:
    assert to_ns([1740461679470813]).tolist() == [1740461679470813000]
    assert to_ns([4473440519079.316]).tolist() == [4473440519079316]
    assert to_ns([1.5, 2], base_ns=BASE).tolist() == [BASE + 1500, BASE + 2000]
    assert to_ns([]).tolist() == []


# -- span mapping on the edge-case fixture ---------------------------------------------------

@pytest.fixture(scope="module")
def gpu_spans(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("gpu") / "run"
    import_kineto([FIXTURES / "gpu_streams_and_flows"], out, comm_patterns=["fused_rs"],
                  keep_cpu_ops=True)
    df = RunReader(out).spans()
    return df.set_index(df["name"].str.extract(r"^(?:void )?([\w:]+)")[0])


def test_fixture_lanes(gpu_spans: pd.DataFrame) -> None:
    lane = gpu_spans["lane"].to_dict()
    assert lane["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"] == "compute"
    assert lane["ncclDevKernel_AllToAll_RING_LL"] == "comm"
    assert lane["moe_combine_kernel"] == "compute"  # weak name on the compute stream
    assert lane["my_ep::sync_flags"] == "comm"  # small helper on the comm stream
    assert lane["custom_all_to_all_kernel"] == "comm"
    assert lane["sm90_gemm_small_kernel"] == "compute"  # compute name on the comm stream
    assert lane["fused_rs_kernel"] == "comm"  # --comm-pattern
    assert lane["Memcpy"] == "memory"
    assert gpu_spans.loc["ncclDevKernel_AllToAll_RING_LL", "sms"] == 24
    assert gpu_spans.loc["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "sms"] == 132
    assert gpu_spans.loc["ncclDevKernel_AllToAll_RING_LL", "bytes"] == 1024 * 2
    assert gpu_spans.loc["ncclDevKernel_AllToAll_RING_LL", "pg"] == "3 (ep_group)"
    assert gpu_spans.loc["Memcpy", "bytes"] == 4096


def test_fixture_annotations(gpu_spans: pd.DataFrame) -> None:
    row = gpu_spans.loc["ncclDevKernel_AllToAll_RING_LL"]
    assert (row["annotation"], row["op"], row["stage"], row["microbatch"], row["step"]) == (
        "moe_block", "FB", 1, 2, 7)
    flow = gpu_spans.loc["at::native::vectorized_elementwise_kernel"]  # linked by ac2g flow
    assert (flow["annotation"], flow["op"]) == ("moe_block", "FB")
    bwd = gpu_spans.loc["at::native::reduce_kernel"]  # launched from another thread
    assert (bwd["annotation"], bwd["op"], bwd["stage"], bwd["microbatch"]) == ("PP:1I0", "I", 1, 0)
    unlinked = gpu_spans.loc["wgrad_gemm_kernel"]  # no launch: gpu_user_annotation
    assert (unlinked["annotation"], unlinked["op"], unlinked["step"]) == ("PP:1W0", "W", 7)
    gpu_ann = gpu_spans[(gpu_spans["kind"] == "annotation") & gpu_spans["stream"].notna()]
    assert gpu_ann["name"].tolist() == ["PP:1W0"]
    assert gpu_ann["device"].tolist() == [0]


def test_fixture_clock_and_host(gpu_spans: pd.DataFrame) -> None:
    # ts relative to baseTimeNanoseconds: added
    assert gpu_spans.loc["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
                         "start_ns"] == BASE + 1_100_250
    ops = gpu_spans[gpu_spans["kind"] == "cpu_op"]
    assert sorted(ops["name"]) == ["aten::mm", "record_param_comms"]  # no gloo: not comm here
    assert set(ops["lane"]) == {"host"}
    assert set(gpu_spans.loc[gpu_spans["kind"] == "annotation", "lane"]) == {"host"}


def test_device_properties_unavailable(tmp_path: Path) -> None:
    """No deviceProperties and no device name: the SMs are unknown, never assumed (an Ampere
    trace must not get Hopper's 132); --sms-per-gpu gives them."""
    out = tmp_path / "run"
    summary = import_kineto([FIXTURES / "device_properties_unavailable"], out)
    reader = RunReader(out)
    assert reader.manifest.extra["sms_per_gpu_unknown_ranks"] == [0]
    assert reader.manifest.topology.sms_per_gpu is None
    k = reader.spans()
    assert k.loc[k["name"].str.contains("gemm"), "sms"].isna().all()
    assert any("SMs per GPU unknown for device(s) [0]" in n and "--sms-per-gpu" in n
               for n in summary.ranks[0].notes)
    res = analyze_run(out)
    status = res["status"].set_index("analysis")
    assert not status.loc["sm_seconds", "available"]
    assert "sms_per_gpu unknown" in status.loc["sm_seconds", "reason"]
    out2 = tmp_path / "given"
    import_kineto([FIXTURES / "device_properties_unavailable"], out2, sms_per_gpu=108)
    k2 = RunReader(out2).spans()
    assert RunReader(out2).manifest.topology.sms_per_gpu == 108
    assert k2.loc[k2["name"].str.contains("gemm"), "sms"].tolist() == [108]


def test_rank_from_file_names(tmp_path: Path) -> None:
    summary = import_kineto([FIXTURES / "rank_from_filename"], tmp_path / "run")
    assert [(r.rank, r.rank_source) for r in summary.ranks] == [(0, "file name"), (1, "file name")]
    assert RunReader(tmp_path / "run").ranks() == [0, 1]


def test_single_file_without_rank_is_rank_0(tmp_path: Path) -> None:
    summary = import_kineto([FIXTURES / "rank_unavailable" / "trace_a.json"], tmp_path / "run")
    assert summary.ranks[0].rank == 0 and summary.ranks[0].rank_source == "default"
