"""The seeded fault suite of ``dualscope import`` (issue 12, items 4, 5 and 7).

Every case runs ``dualscope import`` on a damaged or hostile input in its own process with a
timeout (``tests/helpers/faults.py``: a fork server imports dualscope once and forks one child
per case; two servers use the two cores) and passes only with: exit status 0 or 2, no
``Traceback``, no death by a signal, no hang, nothing left behind. On top of that, no silent
garbage:

- an exit 0 must have imported something (no empty run), with every span's end at or after
  its start and no span at time 0 unless an event really was there;
- a mutated ``ts`` / ``dur`` of an event that becomes a span either stops the import with a
  line naming the file and the event index, or is stored exactly (``round(ts * 1000)`` ns):
  ``ts`` 1e300 or 2**70 never becomes 0, 9.3e15 µs never wraps negative;
- the cases issue 12 saw fail (``"cat": []``, a pid that is a list, ``deviceProperties: 1.5``,
  a rank of 2**31, a FIFO in the trace folder, ``{"traceEvents":[{}]}``) stop with exit 2 and
  the reason.

Cases (seeded, :data:`SEED`): event field swaps and deletions over two small traces (a GPU
trace with launches, flows, annotations, memcpy / memset and communication kernels; a CPU-only
pipeline trace with gloo ops), ``args`` swaps, top-level key swaps, truncations, byte flips and
inserted garbage, structural oddities (nesting, BOM, invalid UTF-8, trailing data, log arrays
after the events), file-system oddities (FIFO, socket, character device, symlink loop, dangling
symlink), several files at once through the process pool, and ``--out`` I/O errors (read-only
file system and no space left on small tmpfs mounts, skipped with the reason where mounting is
not allowed; file too large via ``RLIMIT_FSIZE``; not a directory; a dangling symlink).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.faults import ROOT, Case, ForkServer, cli_env, problems, run_cli

from profiler.store import RunReader

SEED = 20_261_214
WORKERS = 2
BASE_TS = 1_740_000_000_000_000.0  # absolute µs (no baseTimeNanoseconds): start_ns = ts * 1000

pytestmark = pytest.mark.timeout(300)


# -- the traces that get damaged ---------------------------------------------------------------
def _x(cat: str, name: str, pid: Any, tid: Any, ts: float, dur: float, **args: Any) -> dict:
    ev: dict[str, Any] = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
                          "ts": ts, "dur": dur}
    if args:
        ev["args"] = args
    return ev


def gpu_trace() -> dict:
    """A small GPU trace of one rank: every kind of event the importer reads, names unique."""
    t = BASE_TS
    ev: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": "Spans", "tid": 0, "args": {"name": "x"}},
        {"ph": "M", "name": "thread_name", "pid": 10, "tid": 11, "args": {"name": "main"}},
        _x("user_annotation", "ProfilerStep#3", 10, 11, t, 900),
        _x("user_annotation", "PP:0F1", 10, 11, t + 5, 400),
        _x("user_annotation", "attn(F)", 10, 11, t + 10, 100),
        _x("cpu_op", "aten::mm", 10, 11, t + 12, 20, **{"External id": 1}),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 11, t + 14, 5, correlation=101),
        {"ph": "s", "id": 101, "pid": 10, "tid": 11, "ts": t + 14, "cat": "ac2g", "name": "ac2g"},
        _x("kernel", "sm90_gemm_k1", 0, 7, t + 30, 40, device=0, stream=7, correlation=101,
           grid=[132, 1, 1]),
        {"ph": "f", "id": 101, "pid": 0, "tid": 7, "ts": t + 30, "cat": "ac2g", "name": "ac2g",
         "bp": "e"},
        _x("user_annotation", "dispatch(F)", 10, 11, t + 120, 100),
        _x("cpu_op", "nccl:all_to_all", 10, 11, t + 122, 30, **{
            "Input Dims": [[1024, 8]], "Input type": ["c10::BFloat16"],
            "Collective name": "all_to_all", "Process Group Name": "3",
            "Process Group Description": "ep"}),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 11, t + 124, 5, correlation=102),
        _x("kernel", "ncclDevKernel_AllToAll_k2", 0, 20, t + 140, 60, device=0, stream=20,
           correlation=102, grid=[24, 1, 1], dtype="BFloat16", **{
               "In msg nelems": 8192, "Out msg nelems": 8192, "Collective name": "all_to_all",
               "Process Group Name": "3", "Process Group Description": "ep"}),
        {"ph": "s", "id": 103, "pid": 10, "tid": 11, "ts": t + 300, "cat": "ac2g",
         "name": "ac2g"},
        _x("kernel", "elementwise_k3", 0, 7, t + 320, 10, device=0, stream=7, grid=[64, 2, 1]),
        {"ph": "f", "id": 103, "pid": 0, "tid": 7, "ts": t + 320, "cat": "ac2g", "name": "ac2g",
         "bp": "e"},
        _x("gpu_user_annotation", "PP:0W0", 0, 7, t + 400, 100, device=0, stream=7),
        _x("kernel", "wgrad_gemm_k4", 0, 7, t + 410, 50, device=0, stream=7, grid=[8, 8, 1]),
        _x("cuda_runtime", "cudaMemcpyAsync", 10, 11, t + 600, 5, correlation=104),
        _x("gpu_memcpy", "Memcpy HtoD m1", 0, 23, t + 610, 5, device=0, stream=23,
           correlation=104, bytes=4096),
        _x("gpu_memset", "Memset m2", 0, 23, t + 620, 2, device=0, stream=23, bytes=64),
        {"ph": "i", "s": "t", "name": "instant", "pid": 10, "tid": 11, "ts": t + 700},
    ]
    return {"schemaVersion": 1,
            "deviceProperties": [{"id": 0, "name": "NVIDIA H100", "numSms": 132}],
            "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
            "traceEvents": ev, "traceName": "gpu.json"}


def cpu_trace() -> dict:
    """A CPU-only pipeline trace (gloo), ts relative to baseTimeNanoseconds."""
    ev = [
        _x("user_annotation", "ProfilerStep#1", 5, 5, 100.5, 900),
        _x("user_annotation", "PP:0F0", 5, 5, 110.25, 200),
        _x("cpu_op", "c10d::send", 5, 5, 320, 50),
        _x("cpu_op", "record_param_comms", 5, 5, 321, 40, **{"Collective name": "send"}),
        _x("user_annotation", "gloo:send", 5, 5, 322, 30, **{"Input Dims": [[16, 4]],
                                                             "Input type": ["float"]}),
        _x("user_annotation", "PP:0B0", 5, 6, 400, 300),
        _x("cpu_op", "aten::mul", 5, 6, 410, 20),
        _x("user_annotation", "dispatch(B)", 5, 6, 450, 50),
    ]
    return {"distributedInfo": {"backend": "gloo", "rank": 1, "world_size": 2},
            "traceEvents": ev, "baseTimeNanoseconds": 1_790_000_000_000_000_000}


BASES: dict[str, Callable[[], dict]] = {"gpu": gpu_trace, "cpu": cpu_trace}
SPAN_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "user_annotation", "gpu_user_annotation"}

_DELETE = object()
WEIRD: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.5, 2**31, 2**31 - 1, 2**63, 2**64, 2**70, -2**70,
    1e300, -1e300, 9.3e15, -9.3e15, 9.0e15, 1e-300, "", "x", "123", [], [1], [1, 2, 3], {},
    {"a": 1}, [[[[[]]]]], "é中\u0000", "a" * 3000, _DELETE,
]
FIELDS = ["ph", "cat", "name", "pid", "tid", "ts", "ts", "dur", "dur", "id", "args", "s"]
ARG_FIELDS = ["device", "stream", "correlation", "grid", "bytes", "Process Group Name",
              "Process Group Description", "Collective name", "dtype", "In msg nelems",
              "Out msg nelems", "Input Dims", "Input type", "External id"]
META_KEYS = ["deviceProperties", "distributedInfo", "baseTimeNanoseconds", "traceEvents",
             "schemaVersion", "traceName"]
META_VALUES: list[Any] = [
    *WEIRD, [1.5], [{"id": "0"}], [{"id": 0, "numSms": -3}], [{"id": 2**40, "numSms": 2**40}],
    {"rank": 2**31}, {"rank": -1}, {"rank": "abc"}, {"rank": "7"}, {"world_size": 0},
    {"rank": 0, "world_size": 2**63}, {"backend": ["x"]}, [{}], [None],
]


# -- cases -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """One mutated input: ``files`` name -> bytes (or a special maker); ``expect`` what must
    hold beyond the harness's checks."""

    id: str
    files: dict[str, bytes | str]
    args: tuple[str, ...] = ()
    oracle: dict[str, Any] = field(default_factory=dict)
    ok_rc: frozenset[int] = frozenset({0, 2})
    reason: str | None = None  # with exit 2, a text the error line must hold


def _dump(doc: Any) -> bytes:
    """Compact JSON; the standard library's encoder, which writes integers of any size."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _field_cases(rng: random.Random, n: int) -> list[Plan]:
    plans = []
    for k in range(n):
        base = rng.choice(sorted(BASES))
        doc = BASES[base]()
        events = doc["traceEvents"]
        i = rng.randrange(len(events))
        ev = events[i]
        if rng.random() < 0.3 and ev.get("args") is not None:
            key = rng.choice(ARG_FIELDS)
            target = ev["args"]
        else:
            key = rng.choice(FIELDS)
            target = ev
        value = rng.choice(WEIRD)
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
        oracle = {}
        if (target is ev and key in ("ts", "dur") and ev.get("ph") == "X"
                and ev.get("cat") in SPAN_CATS and base == "gpu"
                and type(value) in (int, float)):
            oracle = {"event": i, "name": ev["name"], "key": key, "value": value,
                      "ts": ev.get("ts"), "dur": ev.get("dur")}
        label = "delete" if value is _DELETE else repr(value)[:24]
        plans.append(Plan(f"field {k} {base} event {i} {key}={label}",
                          {"rank0.json": _dump(doc)}, oracle=oracle))
    return plans


def _meta_cases(rng: random.Random, n: int) -> list[Plan]:
    plans = []
    for k in range(n):
        base = rng.choice(sorted(BASES))
        doc = BASES[base]()
        key = rng.choice(META_KEYS)
        value = rng.choice(META_VALUES)
        if value is _DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
        plans.append(Plan(f"meta {k} {base} {key}={repr(value)[:24]}",
                          {"rank0.json": _dump(doc)}))
    return plans


def _byte_cases(rng: random.Random, n: int) -> list[Plan]:
    plans = []
    for k in range(n):
        base = rng.choice(sorted(BASES))
        raw = bytearray(json.dumps(BASES[base](), indent=2).encode())
        kind = ("truncate", "flip", "insert", "delete")[k % 4]
        at = rng.randrange(len(raw))
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "flip":
            raw[at] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            raw[at:at] = rng.choice([b"}", b"]", b"{", b"[", b",", b'"', b"\\", b"\xff\xfe",
                                     b'"traceEvents": [', b"}, {", b"\x00", b"NaN", b"1e999"])
        else:
            del raw[at:at + rng.randrange(1, 40)]
        plans.append(Plan(f"bytes {k} {base} {kind} at {at}", {"rank0.json": bytes(raw)}))
    return plans


def _doc_bytes(**over: Any) -> bytes:
    doc = gpu_trace()
    doc.update(over)
    return _dump(doc)


def _special_cases() -> list[Plan]:
    g = gpu_trace()
    logs = {"traceEvents": g["traceEvents"], "INFO": [{"m": f"x]}}{i}"} for i in range(50)],
            "ERROR": [["]"] * 3] * 20, "deviceProperties": g["deviceProperties"],
            "distributedInfo": g["distributedInfo"]}
    reordered = {"INFO": [["traceEvents", "]"]] * 30, **{k: v for k, v in g.items()
                                                        if k != "traceEvents"},
                 "traceEvents": g["traceEvents"]}
    gz = gzip.compress(_dump(g))
    deep = b'{"traceEvents": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}"
    deep_args = _dump(g).replace(b'"args":{"External id":1}',
                                 b'"args":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    e = _x("kernel", "k", 0, 7, BASE_TS, 1, device=0, stream=7)
    cases = [
        Plan("empty file", {"rank0.json": b""}, reason="empty file"),
        Plan("whitespace only", {"rank0.json": b" \n\t "}, reason="empty file"),
        Plan("null", {"rank0.json": b"null"}, reason="not a trace object"),
        Plan("a number", {"rank0.json": b"12"}, reason="not a trace object"),
        Plan("a string", {"rank0.json": b'"traceEvents"'}, reason="not a trace object"),
        Plan("empty object", {"rank0.json": b"{}"}, reason="no traceEvents list"),
        Plan("empty array", {"rank0.json": b"[]"}, reason="traceEvents is empty"),
        Plan("one empty event", {"rank0.json": b'{"traceEvents":[{}]}'},
             reason="none of its 1 events"),
        Plan("events of no known kind", {"rank0.json": _dump(
            {"traceEvents": [{"ph": "X", "cat": "python_function", "name": "f", "pid": 1,
                              "tid": 1, "ts": 1, "dur": 1}] * 3})}, reason="none of its 3"),
        Plan("traceEvents an object", {"rank0.json": b'{"traceEvents": {"a": []}}'},
             reason="no traceEvents list (it is an object)"),
        Plan("events not objects", {"rank0.json": b'{"traceEvents": [1, "x", null]}'},
             reason="event 0"),
        Plan("bare array of events", {"rank0.json": _dump(g["traceEvents"])}, ok_rc=frozenset({0})),
        Plan("BOM", {"rank0.json": b"\xef\xbb\xbf" + _dump(g)}),
        Plan("trailing garbage", {"rank0.json": _dump(g) + b" xyz"}, reason="JSON"),
        Plan("two documents", {"rank0.json": _dump(g) + _dump(g)}, reason="JSON"),
        Plan("deep nesting in the events", {"rank0.json": deep}),
        Plan("deep nesting in args", {"rank0.json": deep_args}),
        Plan("invalid UTF-8 in a name", {"rank0.json": _dump(g).replace(b"sm90_gemm_k1",
                                                                        b"sm90_\xff\xfe_k1")},
             reason="event 8"),
        Plan("lone surrogate escape", {"rank0.json": _dump(g).replace(b"sm90_gemm_k1",
                                                                      b"sm90\\ud800_k1")}),
        Plan("NaN literal", {"rank0.json": _dump(g).replace(b'"dur":40', b'"dur":NaN')},
             reason="JSON"),
        Plan("log arrays after the events", {"rank0.json": _dump(logs)}, ok_rc=frozenset({0})),
        Plan("keys reordered", {"rank0.json": _dump(reordered)}, ok_rc=frozenset({0})),
        Plan("traceEvents twice", {"rank0.json": _dump(g)[:-1] + b',"traceEvents":[]}'}),
        Plan("gzip", {"rank0.json.gz": gz}, ok_rc=frozenset({0})),
        Plan("gzip truncated", {"rank0.json.gz": gz[:len(gz) // 2]}, reason="broken gzip"),
        Plan("gzip of garbage", {"rank0.json.gz": gzip.compress(b"\x00\x01garbage")},
             reason="rank0.json.gz"),
        Plan("gzip header only", {"rank0.json.gz": gz[:10]}, reason="broken gzip"),
        # the failures issue 12 saw, and its silent garbage
        Plan("cat is a list", {"rank0.json": _dump({"traceEvents": [{**e, "cat": []}]})},
             reason="event 0: cat"),
        Plan("pid is a list", {"rank0.json": _dump({"traceEvents": [{**e, "pid": [0]}]})},
             reason="event 0: pid"),
        Plan("deviceProperties 1.5", {"rank0.json": _doc_bytes(deviceProperties=1.5)},
             reason="deviceProperties is a number"),
        Plan("rank 2**31", {"rank0.json": _doc_bytes(distributedInfo={"rank": 2**31})},
             reason="distributedInfo.rank 2147483648 is out of range"),
        Plan("world_size 2**63", {"rank0.json": _doc_bytes(
            distributedInfo={"rank": 0, "world_size": 2**63})}, reason="out of range"),
        Plan("ts 1e300", {"rank0.json": _dump({"traceEvents": [{**e, "ts": 1e300}]})},
             reason="event 0"),
        Plan("ts 2**70", {"rank0.json": _dump({"traceEvents": [{**e, "ts": 2**70}]})},
             reason="event 0"),
        Plan("ts 9.3e15", {"rank0.json": _dump({"traceEvents": [{**e, "ts": 9.3e15}]})},
             reason="event 0"),
        Plan("ts -9.3e15", {"rank0.json": _dump({"traceEvents": [{**e, "ts": -9.3e15}]})},
             reason="event 0"),
        Plan("dur 1e300", {"rank0.json": _dump({"traceEvents": [{**e, "dur": 1e300}]})},
             reason="event 0"),
        Plan("ts 1e400", {"rank0.json": b'{"traceEvents":[{"ph":"X","cat":"kernel","name":"k",'
                                        b'"pid":0,"tid":7,"ts":1e400,"dur":1}]}'},
             reason="event 0: ts"),
        Plan("base 2**70", {"rank0.json": _dump({"traceEvents": [{**e, "ts": 5.0}],
                                                 "baseTimeNanoseconds": 2**70})},
             reason="baseTimeNanoseconds"),
        Plan("base near int64 max", {"rank0.json": _dump({
            "traceEvents": [{**e, "ts": 9.0e12}], "baseTimeNanoseconds": 9_220_000_000_000_000_000})},
            reason="event 0"),
        Plan("stream 2**40", {"rank0.json": _dump({"traceEvents": [
            {**e, "args": {"device": 0, "stream": 2**40}}]})}, reason="stream/tid 1099511627776"),
        Plan("grid 2**40", {"rank0.json": _dump({"traceEvents": [
            {**e, "args": {"device": 0, "stream": 7, "grid": [2**40, 1, 1]}}]})},
            reason="grid"),
        Plan("correlation 2**70", {"rank0.json": _dump({"traceEvents": [
            {**e, "args": {"device": 0, "stream": 7, "correlation": 2**70}}]})},
            reason="correlation"),
        Plan("message of 2**80 bytes", {"rank0.json": _dump({"traceEvents": [
            _x("cpu_op", "gloo:all_reduce", 1, 1, 1.0, 2.0, **{"Input Dims": [[2**40, 2**40]],
                                                               "Input type": ["float"]})]})},
            reason="bytes"),
    ]
    return cases


# -- file-system and multi-file cases ------------------------------------------------------------
def _fs_cases(root: Path) -> list[tuple[str, tuple[str, ...], frozenset[int], str | None]]:
    """(id, argv before --out, allowed rc, reason) for inputs that are not plain files."""
    root.mkdir()
    good = _dump(gpu_trace())
    out = []

    def folder(name: str) -> Path:
        d = root / name
        d.mkdir()
        (d / "rank0.json").write_bytes(good)
        return d

    d = folder("fifo")
    os.mkfifo(d / "rank1.json")
    out.append(("FIFO in the trace folder", (str(d),), frozenset({2}), "FIFO"))
    fifo = root / "lone.json"
    os.mkfifo(fifo)
    out.append(("FIFO as the input", (str(fifo),), frozenset({2}), "FIFO"))
    d = folder("socket")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "rank1.json"))
    s.close()
    out.append(("socket in the trace folder", (str(d),), frozenset({2}), "socket"))
    d = folder("device")
    os.symlink("/dev/zero", d / "rank1.json")
    out.append(("character device in the folder", (str(d),), frozenset({2}),
                "character device"))
    d = folder("loop")
    os.symlink(d / "rank1.json", d / "rank1.json")
    out.append(("symlink loop in the folder", (str(d),), frozenset({2}), "symlink loop"))
    loop = root / "loop.json"
    os.symlink(loop, loop)
    out.append(("symlink loop as the input", (str(loop),), frozenset({2}), "symlink loop"))
    d = folder("dangling")
    os.symlink(d / "gone.json", d / "rank1.json")
    out.append(("dangling symlink in the folder", (str(d),), frozenset({2}),
                "dangling symlink"))
    d = folder("subdir")
    (d / "nested.json").mkdir()
    out.append(("a directory named .json is skipped", (str(d),), frozenset({0}), None))
    empty = root / "emptydir"
    empty.mkdir()
    out.append(("empty folder", (str(empty),), frozenset({2}), "no trace files"))
    # several files through the process pool
    many = root / "many"
    many.mkdir()
    for r in range(4):
        doc = gpu_trace()
        doc["distributedInfo"] = {"rank": r, "world_size": 4}
        (many / f"rank{r}.json").write_bytes(_dump(doc))
    out.append(("four ranks, two workers", (str(many), "--jobs", "2"), frozenset({0}), None))
    bad = root / "one_bad"
    shutil.copytree(many, bad)
    doc = gpu_trace()
    doc["distributedInfo"] = {"rank": 2, "world_size": 4}
    doc["traceEvents"][8]["ts"] = 1e300
    (bad / "rank2.json").write_bytes(_dump(doc))
    out.append(("one bad file among four, two workers", (str(bad), "--jobs", "2"),
                frozenset({2}), "rank2.json: event 8"))
    dup = root / "dup"
    shutil.copytree(many, dup)
    shutil.copy(dup / "rank1.json", dup / "rank1_copy.json")
    out.append(("duplicate rank, two workers", (str(dup), "--jobs", "2"), frozenset({2}),
                "claims rank 1"))
    trunc = root / "truncated_last"
    shutil.copytree(many, trunc)
    data = (trunc / "rank3.json").read_bytes()
    (trunc / "rank3.json").write_bytes(data[: len(data) * 2 // 3])
    out.append(("truncated last file, three workers", (str(trunc), "--jobs", "3"),
                frozenset({2}), "rank3.json: invalid or truncated JSON"))
    return out


# -- running and judging -------------------------------------------------------------------------
class ImportServer(ForkServer):
    """The harness's fork server with the importer preloaded too (its children only run the
    command)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import profiler.commands.import_cmd, "
             "profiler.importers.parallel; from helpers.faults import _serve; _serve()"],
            cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if line.strip() != "ready":
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"fork server did not start: {line!r} {err[-2000:]}")


def _ns(us: float) -> int:
    """round(us * 1000) as the importer stores it (floor plus rounded fraction)."""
    whole = math.floor(us)
    return int(whole) * 1000 + round((us - whole) * 1000.0)


def _garbage(plan: Plan, inputs: dict[str, bytes | str], run: Path) -> list[str]:
    """Silent garbage in a run imported with exit 0 (see the module docstring)."""
    reader = RunReader(run)
    spans = reader.span_table(columns=["name", "start_ns", "end_ns"]).to_pydict()
    bad = []
    if not spans["name"]:
        bad.append("exit 0 with an empty run")
    if any(e < s for s, e in zip(spans["start_ns"], spans["end_ns"], strict=True)):
        bad.append("a span ends before it starts")
    if 0 in spans["start_ns"] and not any(
            isinstance(d, bytes) and (b'"ts":0' in d or b'"ts":-0' in d or b"e-3" in d)
            for d in inputs.values()):
        bad.append("a span at time 0 that no event had")
    o = plan.oracle
    if o and o["name"] in spans["name"]:
        i = spans["name"].index(o["name"])
        ts, dur = o["ts"], o["dur"] if o["dur"] is not None else 0
        if isinstance(ts, (int, float)) and isinstance(dur, (int, float)):
            want_s = _ns(ts)
            want_e = want_s + max(_ns(dur), 0)
            if (spans["start_ns"][i], spans["end_ns"][i]) != (want_s, want_e):
                bad.append(f"SILENT CHANGE: {o['key']}={o['value']!r} stored as "
                           f"[{spans['start_ns'][i]}, {spans['end_ns'][i]}], want "
                           f"[{want_s}, {want_e}]")
    elif o and type(o["ts"]) in (int, float) and o["key"] == "ts":
        bad.append(f"the event with {o['key']}={o['value']!r} vanished with exit 0")
    return bad


def _run(server: ForkServer, work: Path, plan: Plan) -> list[str]:
    """Write the plan's files into a fresh folder, import it, judge, clean up."""
    src = work / "in"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name, data in plan.files.items():
        (src / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    out = work / "run"
    o = server.run(Case(plan.id, ("import", str(src), "--out", str(out), *plan.args),
                        cwd=str(work), watch=(str(work),), outputs=(str(src), str(out)),
                        timeout_s=30, ok_rc=plan.ok_rc))
    bad = problems(o)
    lines = o.stderr.strip().splitlines()
    if o.rc == 2 and (len(lines) != 1 or not lines[0].startswith("dualscope: error: ")
                      or str(src) not in lines[0]):
        bad.append(f"not one error line naming the input: {o.stderr[-300:]!r}")
    if plan.reason is not None and (o.rc != 2 or plan.reason not in o.stderr):
        bad.append(f"expected exit 2 with {plan.reason!r}: rc {o.rc} {o.stderr[-300:]!r}")
    if o.rc == 0:
        bad += _garbage(plan, plan.files, out)
    if o.rc != 0 and out.exists():
        bad.append("a failed import left a run")
    shutil.rmtree(out, ignore_errors=True)
    return [f"{plan.id}: {b}" for b in bad]


def _in_workers(plans: list[Plan], root: Path) -> list[str]:
    servers = [ImportServer() for _ in range(WORKERS)]
    try:
        def share(w: int) -> list[str]:
            work = root / f"w{w}"
            work.mkdir()
            return [b for p in plans[w::WORKERS] for b in _run(servers[w], work, p)]

        with ThreadPoolExecutor(WORKERS) as pool:
            return [b for bs in pool.map(share, range(WORKERS)) for b in bs]
    finally:
        for s in servers:
            s.close()


def test_mutated_traces(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    plans = [*_field_cases(rng, 180), *_meta_cases(rng, 50), *_byte_cases(rng, 64),
             *_special_cases()]
    assert len(plans) >= 300
    t0 = time.perf_counter()
    failures = _in_workers(plans, tmp_path)
    assert failures == [], "\n".join(failures[:40])
    print(f"{len(plans)} mutated traces in {time.perf_counter() - t0:.1f} s")


def test_file_system_oddities_and_several_files(tmp_path: Path) -> None:
    cases = _fs_cases(tmp_path / "inputs")
    failures = []
    with ImportServer() as server:
        for what, inputs, ok_rc, reason in cases:
            out = tmp_path / "run"
            o = server.run(Case(what, ("import", *inputs, "--out", str(out)),
                                cwd=str(tmp_path), watch=(str(tmp_path),),
                                outputs=(str(tmp_path / "inputs"), str(out)), timeout_s=30,
                                ok_rc=ok_rc))
            bad = problems(o)
            if reason is not None and reason not in o.stderr:
                bad.append(f"expected {reason!r} in {o.stderr[-300:]!r}")
            if o.rc == 2 and len(o.stderr.strip().splitlines()) != 1:
                bad.append(f"not one line: {o.stderr[-300:]!r}")
            failures += [f"{what}: {b}" for b in bad]
            shutil.rmtree(out, ignore_errors=True)
    assert failures == [], "\n".join(failures)


# -- --out I/O errors ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks, a few hundred kB of run: more than the small mounts below can take."""
    d = tmp_path_factory.mktemp("traces")
    for r in range(2):
        doc = gpu_trace()
        doc["distributedInfo"] = {"rank": r, "world_size": 2}
        k = doc["traceEvents"][8]
        doc["traceEvents"] += [{**k, "name": f"k{i}", "ts": BASE_TS + 1000 + i}
                               for i in range(20_000)]
        (d / f"rank{r}.json").write_bytes(_dump(doc))
    return d


def _out_case(trace_dir: Path, out: Path, watch: Path, reason: str, *,
              rlimits: tuple[tuple[int, int], ...] = (), jobs: str = "2") -> list[str]:
    o = run_cli(Case(f"import --out {out}", ("import", str(trace_dir), "--out", str(out),
                                             "--jobs", jobs),
                     watch=(str(watch),), ok_rc=frozenset({2}), rlimits=rlimits,
                     timeout_s=60))
    bad = problems(o)
    lines = o.stderr.strip().splitlines()
    if len(lines) != 1 or str(out) not in lines[0] or reason not in lines[0]:
        bad.append(f"expected one line naming {out} and {reason!r}: {o.stderr[-400:]!r}")
    return [f"--out {out.name} ({reason}): {b}" for b in bad]


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): the "
                    "read-only and full-disk cases need one; the file-size, not-a-directory "
                    "and symlink cases ran")


def test_out_not_writable(trace_dir: Path, tmp_path: Path) -> None:
    """Errors that need no mount: file too large (RLIMIT_FSIZE), a parent that is a file, a
    dangling symlink as --out or as its parent, a symlink loop."""
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    failures = [
        *_out_case(trace_dir, tmp_path / "big", tmp_path, "file too large",
                   rlimits=((resource.RLIMIT_FSIZE, 64 * 1024),)),
        *_out_case(trace_dir, tmp_path / "big1", tmp_path, "file too large",
                   rlimits=((resource.RLIMIT_FSIZE, 64 * 1024),), jobs="1"),
        *_out_case(trace_dir, tmp_path / "afile" / "run", tmp_path, "not a directory"),
        *_out_case(trace_dir, tmp_path / "dangling", tmp_path, "dangling symlink"),
        *_out_case(trace_dir, tmp_path / "dangling" / "run", tmp_path, "dangling symlink"),
        *_out_case(trace_dir, tmp_path / "loop" / "run", tmp_path, "symlink loop"),
    ]
    assert failures == [], "\n".join(failures)


def test_out_on_read_only_and_full_file_systems(trace_dir: Path, tmp_path: Path) -> None:
    ro, full = tmp_path / "ro", tmp_path / "full"
    _mount(ro, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        _mount(full, "256k")
        failures = [
            *_out_case(trace_dir, ro / "run", ro, "read-only file system"),
            *_out_case(trace_dir, full / "run", full, "no space left on device"),
            *_out_case(trace_dir, full / "run1", full, "no space left on device", jobs="1"),
        ]
        assert sorted(os.listdir(full)) == [], os.listdir(full)
    finally:
        for m in (ro, full):
            subprocess.run(["umount", "-l", str(m)], check=False)
    assert failures == [], "\n".join(failures)


def test_fault_cases_are_seeded() -> None:
    a = [p.files for p in _field_cases(random.Random(SEED), 20)]
    b = [p.files for p in _field_cases(random.Random(SEED), 20)]
    assert a == b

