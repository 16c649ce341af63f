"""Generate a multi-rank Kineto (torch.profiler) trace set for the import benchmark.

    python bench/gen_kineto.py --out bench/data/kineto-200mb --ranks 8 --target-mb 200

One ``*.pt.trace.json`` per rank, shaped like a torch.profiler GPU trace of DualPipeV
training of a DeepSeek-V3-style MoE model on H800s (see /work/shared/external/
deepseek_train_ep64.json for the real thing):

* top level: ``schemaVersion``, ``deviceProperties`` (8 × H800, numSms 132),
  ``distributedInfo`` (nccl, rank, world_size; written ``"rank": N`` with a space, which
  HTA's rank regex needs), then ``traceEvents``, and at the end ``traceName``,
  ``displayTimeUnit`` and ``baseTimeNanoseconds`` as Kineto writes them;
* ``ts``/``dur`` in µs with three decimals (ns resolution) relative to
  ``baseTimeNanoseconds``, with a per-rank host clock skew of up to 200 µs;
* per rank one ``ProfilerStep#N`` per step, and per step the DualPipeV op list of the rank
  (``PP:3F1``, ``PP:12I0``, ``PP:3W0``, ``PP:(3F5;12B2)OVERLAP_F_B``, ...) with
  ``attn(F)`` / ``dispatch(F)`` / ``mlp(B)`` / ``combine(B)`` / ``attn(W)`` sub-annotations;
* per kernel a ``cpu_op`` (``External id``, ``Record function id``, ``Sequence number``,
  ``Ev Idx``) with a child op, a ``cuda_runtime`` ``cudaLaunchKernel`` (``correlation``), an
  ``ac2g`` flow start/end, and the ``kernel`` with full Kineto args; GEMMs (grid 112) on stream
  7, DeepEP dispatch/combine and ``ncclDevKernel_SendRecv`` (grid 20) on stream 27,
  elementwise / norm / attention kernels on stream 7; backward ops on the autograd thread;
  ``gpu_user_annotation`` spans, ``gpu_memcpy``/``gpu_memset`` and ``M`` metadata.

Seeded (``--seed``): the same arguments give byte-identical files. Ranks are written in
parallel processes (``--jobs``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BASE_TIME_NS = 1_740_461_600_000_000_000
SMS = 132
COMPUTE_STREAM, COMM_STREAM, COPY_STREAM = 7, 27, 23

_H800 = ('{"id": %d, "name": "NVIDIA H800", "totalGlobalMem": 84943110144, "computeMajor": 9, '
         '"computeMinor": 0, "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048, '
         '"regsPerBlock": 65536, "regsPerMultiprocessor": 65536, "warpSize": 32, '
         '"sharedMemPerBlock": 49152, "sharedMemPerMultiprocessor": 233472, "numSms": 132, '
         '"sharedMemPerBlockOptin": 232448}')

# (name, grid, block, registers per thread, shared memory, mean duration µs, cpu op)
_GEMM = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_ptp128c::GemmKernel>(dpsk::grouped_gemm::cuda::fp8_ptp128c::GemmKernel::Params)"
_GGEMM = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel>(dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel::Params)"
_WGEMM = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_dptp128c_acc::GemmKernel>(dpsk::grouped_gemm::cuda::fp8_dptp128c_acc::GemmKernel::Params)"
K: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int], int, int, float, str]] = {
    "ln_fwd": ("void layer_norm::ln_fwd_kernel<layer_norm::Kernel_traits<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, float, unsigned int, 7168u, 1u, 4u, 1u, 16u> >(layer_norm::FwdParams)", (396, 1, 1), (128, 1, 1), 64, 0, 25, "DropoutAddLayerNormFn"),
    "ln_bwd": ("void layer_norm::ln_bwd_kernel<layer_norm::Kernel_traits<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, float, unsigned int, 7168u, 1u, 4u, 1u, 16u> >(layer_norm::BwdParams)", (132, 1, 1), (128, 1, 1), 80, 0, 40, "DropoutAddLayerNormFnBackward"),
    "cast": ("void cuda::per_token_cast_to_fp8_with_channels<__nv_bfloat16, 128, false, 128, false>(__nv_bfloat16 const*, int, unsigned char*, float*, int, int, int, int, bool, float, __nv_fp8_interpretation_t)", (4096, 1, 1), (128, 1, 1), 31, 0, 22, "dpsk::per_token_cast_to_fp8"),
    "gemm": (_GEMM, (112, 1, 1), (384, 1, 1), 168, 232448, 180, "dpsk::fp8_gemm"),
    "ggemm": (_GGEMM, (1, 112, 1), (384, 1, 1), 168, 232448, 320, "dpsk::m_grouped_fp8_gemm"),
    "wgemm": (_WGEMM, (112, 1, 1), (384, 1, 1), 168, 232448, 260, "dpsk::fp8_wgrad_gemm"),
    "rotary": ("rotary_kernel", (1024, 1, 1), (128, 1, 1), 40, 0, 12, "RotaryEmbedding"),
    "flash_fwd": ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<192, 128, 64, 4, false, false, cutlass::bfloat16_t, Flash_kernel_traits<192, 128, 64, 4, cutlass::bfloat16_t> >, false, true, false, false, true, true, false, false>(flash::Flash_fwd_params)", (32, 128, 1), (128, 1, 1), 255, 98304, 420, "FlashAttnFunc"),
    "flash_bwd": ("void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<192, 64, 128, 8, 2, 4, 2, false, false, cutlass::bfloat16_t, Flash_kernel_traits<192, 64, 128, 8, cutlass::bfloat16_t> >, true, false, false, false, false, true, false>(flash::Flash_bwd_params)", (64, 128, 1), (256, 1, 1), 255, 147456, 900, "FlashAttnFuncBackward"),
    "add": ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)", (57344, 1, 1), (128, 1, 1), 26, 0, 15, "aten::add"),
    "silu": ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<at::native::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#1}::operator()() const::{lambda(c10::BFloat16)#1}> >(int, at::native::gpu_kernel_impl<at::native::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#1}::operator()() const::{lambda(c10::BFloat16)#1}> const&)", (4096, 1, 1), (128, 1, 1), 30, 0, 18, "aten::silu"),
    "notify": ("void dpsk::ep::internode::cached_notify<false>(int, int, int, int, int*, int, int, int const*, int*, int*, void*, int*, void**, int, int**, int, int, bool)", (20, 1, 1), (512, 1, 1), 40, 0, 30, "deep_ep::Buffer::internode_dispatch"),
    "dispatch": ("void dpsk::ep::internode::dispatch<false, 8, 16, 24, 2, 10>(int4*, float*, long*, float*, void*, int4*, int*, int*, int*, int*, int4 const*, float const*, long const*, float const*, int const*, bool const*, int const*, int const*, int, int, int, int, int, int, int, void*, int, int, void**, int, int, int, int)", (20, 1, 1), (768, 1, 1), 128, 0, 480, "deep_ep::Buffer::internode_dispatch"),
    "combine": ("void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 8, 2, 16, 24>(int4*, float*, bool const*, int4 const*, float const*, int const*, int const*, int const*, int const*, int const*, int const*, void*, int, int, int, void**, int, int, int, int)", (20, 1, 1), (768, 1, 1), 128, 0, 450, "deep_ep::Buffer::internode_combine"),
    "sendrecv": ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", (20, 1, 1), (640, 1, 1), 96, 0, 140, "nccl:send"),
}

# sub-part -> kernels, per layer
_F_ATTN = ["ln_fwd", "cast", "gemm", "rotary", "flash_fwd", "gemm", "add"]
_F_MLP = ["cast", "ggemm", "silu", "cast", "ggemm", "gemm", "add"]
_I_MLP = ["ggemm", "silu", "ggemm", "gemm"]
_I_ATTN = ["gemm", "flash_bwd", "rotary", "gemm", "ln_bwd"]
_W_MLP = ["wgemm", "wgemm", "wgemm"]
_W_ATTN = ["wgemm", "wgemm"]
_CHILD_OPS = ("aten::empty", "aten::view", "aten::as_strided", "aten::reshape", "aten::empty_like")


@dataclass
class Chunk:
    """One pipeline chunk in flight: its sub-parts run in order (a dependency chain)."""

    parts: list[tuple[str, list[str]]]
    ready: float = 0.0  # ns: earliest GPU start of the next sub-part


@dataclass
class RankTrace:
    rank: int
    world: int
    layers: int
    rng: random.Random
    pid: int = 0
    tid_main: int = 0
    tid_bwd: int = 0
    device: int = 0
    cpu: float = 0.0  # ns since base, host cursor
    stream_free: dict[int, float] = field(default_factory=dict)
    next_id: int = 1
    ev_idx: int = 0
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pid = 3000 + 97 * self.rank
        self.tid_main = self.pid
        self.tid_bwd = self.pid + 1405
        self.device = self.rank % 8
        self.cpu = 61_000_000_000.0 + self.rng.uniform(0, 200_000)  # host clock skew
        self.stream_free = {COMPUTE_STREAM: self.cpu, COMM_STREAM: self.cpu, COPY_STREAM: self.cpu}

    # -- primitives -------------------------------------------------------------------
    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def x(self, cat: str, name: str, pid: int, tid: int, ts: float, dur: float,
          args: dict[str, Any] | None = None) -> dict[str, Any]:
        # round the two ends (not ts and dur) to ns: rounding is monotone, so spans that
        # nest or follow each other in the simulation still do in the file
        start, end = round(ts), round(ts + dur)
        ev: dict[str, Any] = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
                              "ts": start / 1000, "dur": (end - start) / 1000}
        if args is not None:
            ev["args"] = args
        self.events.append(ev)
        return ev

    def annotation(self, name: str, tid: int, ts: float, dur: float) -> None:
        self.ev_idx += 1
        self.x("user_annotation", name, self.pid, tid, ts, dur,
               {"External id": self._id(), "Record function id": 0, "Ev Idx": self.ev_idx})

    def launch(self, key: str, tid: int, ready: float, backward: bool) -> tuple[float, float]:
        """cpu_op + child op + cudaLaunchKernel + flow + kernel; returns the kernel's span."""
        name, grid, block, regs, smem, mean, op = K[key]
        rng = self.rng
        stream = COMM_STREAM if key in ("notify", "dispatch", "combine", "sendrecv") \
            else COMPUTE_STREAM
        t = self.cpu
        ext = self._id()
        corr = self._id()
        self.ev_idx += 1
        op_args: dict[str, Any] = {"External id": ext, "Record function id": 0,
                                   "Ev Idx": self.ev_idx}
        if backward:
            self.seq += 1
            op_args.update({"Fwd thread id": 1, "Sequence number": self.seq})
        child = rng.uniform(1_500, 4_000)
        launch_at = t + 2_000 + child
        launch = rng.uniform(3_500, 7_000)
        op_dur = launch_at + launch + rng.uniform(1_000, 3_000) - t
        self.x("cpu_op", op, self.pid, tid, t, op_dur, op_args)
        self.ev_idx += 1
        self.x("cpu_op", rng.choice(_CHILD_OPS), self.pid, tid, t + 1_000, child,
               {"External id": self._id(), "Record function id": 0, "Ev Idx": self.ev_idx})
        self.x("cuda_runtime", "cudaLaunchKernel", self.pid, tid, launch_at, launch,
               {"External id": ext, "cbid": 211, "correlation": corr})
        self.events.append({"ph": "s", "id": corr, "pid": self.pid, "tid": tid,
                            "ts": round(launch_at) / 1000, "cat": "ac2g", "name": "ac2g"})
        start = max(launch_at + launch + rng.uniform(3_000, 8_000), self.stream_free[stream],
                    ready)
        dur = mean * 1000 * rng.uniform(0.7, 1.4)
        self.stream_free[stream] = start + dur
        blocks = grid[0] * grid[1] * grid[2]
        warps = blocks * (block[0] // 32) / SMS
        args: dict[str, Any] = {
            "External id": ext, "queued": 0, "device": self.device, "context": 1,
            "stream": stream, "correlation": corr, "registers per thread": regs,
            "shared memory": smem, "blocks per SM": round(blocks / SMS, 6),
            "warps per SM": round(warps, 6), "grid": list(grid), "block": list(block),
            "est. achieved occupancy %": min(100, int(warps * 100 / 64) if warps < 64 else 100),
        }
        if key == "sendrecv":
            args.update({"Collective name": "send", "In msg nelems": 7340032,
                         "Out msg nelems": 7340032, "Group size": 2, "dtype": "BFloat16",
                         "Process Group Name": "pp", "Process Group Description": "pp"})
        self.x("kernel", name, self.device, stream, start, dur, args)
        self.events.append({"ph": "f", "id": corr, "pid": self.device, "tid": stream,
                            "ts": round(start) / 1000, "cat": "ac2g", "name": "ac2g",
                            "bp": "e"})
        self.cpu = t + op_dur + rng.uniform(500, 2_500)
        return start, start + dur

    def run_part(self, chunk: Chunk, tid: int, backward: bool) -> None:
        """Launch the next sub-part of a chunk under its annotation (and a GPU annotation)."""
        label, keys = chunk.parts.pop(0)
        t0 = self.cpu
        first = last = None
        for key in keys:
            s, e = self.launch(key, tid, chunk.ready, backward)
            first = s if first is None else first
            last = e
        assert first is not None and last is not None
        chunk.ready = last
        self.annotation(label, tid, t0, self.cpu - t0)
        stream = COMM_STREAM if label.startswith(("dispatch", "combine")) else COMPUTE_STREAM
        self.x("gpu_user_annotation", label, self.device, stream, first, last - first,
               {"External id": self._id()})

    def sync(self, tid: int) -> None:
        """Poll like DualPipe's P2P waits: a few cudaEventQuery, then a blocking wait."""
        gpu_end = max(self.stream_free.values())
        for _ in range(self.rng.randint(1, 3)):
            d = self.rng.uniform(800, 1_500)
            self.x("cuda_runtime", "cudaEventQuery", self.pid, tid, self.cpu, d,
                   {"External id": self._id(), "cbid": 146, "correlation": self._id()})
            self.cpu += d + self.rng.uniform(5_000, 20_000)
        if gpu_end > self.cpu + 2_000_000:  # keep the host at most ~2 ms ahead
            wait = gpu_end - 2_000_000 - self.cpu
            self.x("cuda_runtime", "cudaStreamWaitEvent", self.pid, tid, self.cpu, 2_000,
                   {"External id": self._id(), "cbid": 147, "correlation": self._id()})
            self.cpu += wait

    def memcpy(self, kind: str, nbytes: int) -> None:
        corr = self._id()
        d = self.rng.uniform(3_000, 6_000)
        self.x("cuda_runtime", "cudaMemcpyAsync" if kind != "memset" else "cudaMemsetAsync",
               self.pid, self.tid_main, self.cpu, d,
               {"External id": corr, "cbid": 51, "correlation": corr})
        start = max(self.cpu + d + 4_000, self.stream_free[COPY_STREAM])
        dur = 2_000 + nbytes / 20.0
        name, cat = (("Memset (Device)", "gpu_memset") if kind == "memset"
                     else ("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy"))
        self.x(cat, name, self.device, COPY_STREAM, start, dur,
               {"device": self.device, "context": 1, "stream": COPY_STREAM, "correlation": corr,
                "bytes": nbytes, "memory bandwidth (GB/s)": round(nbytes / dur, 6)})
        self.stream_free[COPY_STREAM] = start + dur
        self.cpu += d + 1_000


@dataclass(frozen=True)
class Op:
    """A DualPipeV action: ``F``/``B``/``I`` of a phase, ``W``, or ``FB`` (F of ``phase``
    overlapped with B of ``b_phase``)."""

    kind: str
    phase: int = 0
    b_phase: int = 0


def dualpipev_ops(rank: int, pp: int, microbatches: int) -> list[Op]:
    """DualPipeV op list of one rank, as in /work/shared/REFERENCE.md (H -> P, h -> r)."""
    p, r, m = pp, rank, microbatches
    f0, f1, b0, b1, i0, i1, w = (Op("F", 0), Op("F", 1), Op("B", 0), Op("B", 1), Op("I", 0),
                                 Op("I", 1), Op("W"))
    ops: list[Op] = []
    ops += [f0] * (2 * (p - r - 1))
    ops += [f0, f1] * (r + 1)
    ops += [i1, w, f1] * (p - r - 1)
    ops += [Op("FB", 0, 1), Op("FB", 1, 0)] * (m - 2 * p + r + 1)
    ops += [b1, Op("FB", 1, 0)] * (p - r - 1)
    ops += [b1, b0] * (r + 1)
    ops += [w, i0] * (p - r - 1)
    ops += [w] * (r + 1)
    return ops


def _forward_parts(layers: int, tag: str) -> list[tuple[str, list[str]]]:
    parts: list[tuple[str, list[str]]] = []
    for _ in range(layers):
        parts += [(f"attn({tag})", _F_ATTN), (f"dispatch({tag})", ["notify", "dispatch"]),
                  (f"mlp({tag})", _F_MLP), (f"combine({tag})", ["combine"])]
    return parts


def _backward_parts(layers: int, with_w: bool) -> list[tuple[str, list[str]]]:
    parts: list[tuple[str, list[str]]] = []
    for _ in range(layers):
        parts += [("combine(B)", ["notify", "dispatch"]), ("mlp(B)", _I_MLP)]
        if with_w:
            parts.append(("mlp(W)", _W_MLP))
        parts += [("dispatch(B)", ["combine"]), ("attn(B)", _I_ATTN)]
        if with_w:
            parts.append(("attn(W)", _W_ATTN))
    return parts


def _weight_parts(layers: int) -> list[tuple[str, list[str]]]:
    return [p for _ in range(layers) for p in (("mlp(W)", _W_MLP), ("attn(W)", _W_ATTN))]


def gen_step(rt: RankTrace, step: int, pp: int, microbatches: int,
             full: Callable[[], bool] | None = None) -> None:
    """One training step of the rank; ``full()`` is asked after each op and ends the step
    early (the ProfilerStep still closes) when it says the file is big enough."""
    r, p = rt.rank, pp
    stages = (r, 2 * p - 1 - r)
    mb = {(k, ph): 0 for k in "FBI" for ph in (0, 1)}
    w_queue: list[tuple[int, int]] = []
    step_start = rt.cpu
    rt.memcpy("htod", 4 * 4096 * 8)
    rt.memcpy("memset", 8)
    for op in dualpipev_ops(r, p, microbatches):
        kind = op.kind
        t0 = rt.cpu
        if kind == "F":
            ph = op.phase
            i = mb[("F", ph)]
            mb[("F", ph)] += 1
            label = f"PP:{stages[ph]}F{i}"
            chunk = Chunk(_forward_parts(rt.layers, "F"))
            while chunk.parts:
                rt.run_part(chunk, rt.tid_main, False)
            rt.launch("sendrecv", rt.tid_main, chunk.ready, False)
        elif kind in ("B", "I"):
            ph = op.phase
            i = mb[("B", ph)]
            mb[("B", ph)] += 1
            label = f"PP:{stages[ph]}{kind}{i}"
            if kind == "I":
                w_queue.append((stages[ph], i))
            chunk = Chunk(_backward_parts(rt.layers, with_w=kind == "B"))
            while chunk.parts:
                rt.run_part(chunk, rt.tid_bwd, True)
            rt.launch("sendrecv", rt.tid_bwd, chunk.ready, True)
        elif kind == "W":
            stage, i = w_queue.pop(0) if w_queue else (stages[0], 0)
            label = f"PP:{stage}W{i}"
            chunk = Chunk(_weight_parts(rt.layers))
            while chunk.parts:
                rt.run_part(chunk, rt.tid_bwd, True)
        else:  # overlapped F&B: interleave the two chunks' sub-parts on the main thread
            f_ph, b_ph = op.phase, op.b_phase
            fi, bi = mb[("F", f_ph)], mb[("B", b_ph)]
            mb[("F", f_ph)] += 1
            mb[("B", b_ph)] += 1
            label = f"PP:({stages[f_ph]}F{fi};{stages[b_ph]}B{bi})OVERLAP_F_B"
            fwd = Chunk(_forward_parts(rt.layers, "F"))
            bwd = Chunk(_backward_parts(rt.layers, with_w=True))
            while fwd.parts or bwd.parts:
                if bwd.parts:
                    rt.run_part(bwd, rt.tid_main, True)
                if fwd.parts:
                    rt.run_part(fwd, rt.tid_main, False)
            rt.launch("sendrecv", rt.tid_main, max(fwd.ready, bwd.ready), False)
        rt.sync(rt.tid_main)
        rt.annotation(label, rt.tid_main, t0, rt.cpu - t0)
        if full is not None and full():
            break
    rt.annotation(f"ProfilerStep#{step}", rt.tid_main, step_start, rt.cpu - step_start)
    rt.cpu += rt.rng.uniform(50_000, 150_000)


def _header(rank: int, world: int) -> bytes:
    devices = ",\n    ".join(_H800 % i for i in range(8))
    return (
        "{\n"
        '  "schemaVersion": 1,\n'
        f'  "deviceProperties": [\n    {devices}\n  ],\n'
        f'  "distributedInfo": {{"backend": "nccl", "rank": {rank}, "world_size": {world}, '
        f'"pg_count": 2, "pg_config": [{{"pg_name": "0", "pg_desc": "default_pg", '
        f'"backend_config": "cuda:nccl", "pg_size": {world}, "ranks": {list(range(world))}}}], '
        '"nccl_version": "2.21.5"},\n'
        '  "record_shapes": 0,\n'
        '  "with_stack": 0,\n'
        '  "cuda_runtime_version": 12040,\n'
        '  "cuda_driver_version": 12040,\n'
        '  "trace_id": "DUALSCOPE_BENCH",\n'
        '  "traceEvents": [\n'
    ).encode()


def _metadata(rt: RankTrace, ts: float) -> list[dict[str, Any]]:
    t = round(ts) / 1000
    ev: list[dict[str, Any]] = []
    for pid, label, sort in ((rt.pid, "CPU", rt.pid), (rt.device, f"GPU {rt.device}",
                                                        16777216 + rt.device)):
        ev += [{"name": "process_name", "ph": "M", "ts": t, "pid": pid, "tid": 0,
                "args": {"name": "python3"}},
               {"name": "process_labels", "ph": "M", "ts": t, "pid": pid, "tid": 0,
                "args": {"labels": label}},
               {"name": "process_sort_index", "ph": "M", "ts": t, "pid": pid, "tid": 0,
                "args": {"sort_index": sort}}]
    for stream in (COMPUTE_STREAM, COPY_STREAM, COMM_STREAM):
        ev += [{"name": "thread_name", "ph": "M", "ts": t, "pid": rt.device, "tid": stream,
                "args": {"name": f"stream {stream} "}},
               {"name": "thread_sort_index", "ph": "M", "ts": t, "pid": rt.device,
                "tid": stream, "args": {"sort_index": stream}}]
    for tid in (rt.tid_main, rt.tid_bwd):
        ev += [{"name": "thread_name", "ph": "M", "ts": t, "pid": rt.pid, "tid": tid,
                "args": {"name": f"thread {tid} (python3)"}},
               {"name": "thread_sort_index", "ph": "M", "ts": t, "pid": rt.pid, "tid": tid,
                "args": {"sort_index": tid}}]
    return ev


def generate_rank(out_dir: str, rank: int, world: int, target_bytes: int, seed: int,
                  layers: int, microbatches: int) -> dict[str, Any]:
    """Write one rank's trace; steps are added until the file reaches ``target_bytes``."""
    rng = random.Random(seed * 1_000_003 + rank)
    rt = RankTrace(rank=rank, world=world, layers=layers, rng=rng)
    path = Path(out_dir) / f"node{rank // 8:02d}_{rt.pid}.1740461679123.pt.trace.json"
    counts = {"events": 0, "kernels": 0, "steps": 0}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(_header(rank, world))
        first = _metadata(rt, rt.cpu)
        written = f.tell()
        step = 0
        sep = b"    "
        sized = [written, 0]  # bytes written + bytes of the step so far, events counted

        def full() -> bool:
            """Small files (a 2,048-rank set): the first step stops at an op boundary once
            the file has reached its target; bigger files hold whole steps only (unchanged
            output for them)."""
            new = rt.events[sized[1]:]
            sized[0] += len(orjson.dumps(new)) + 6 * len(new)
            sized[1] = len(rt.events)
            return sized[0] >= target_bytes

        while written < target_bytes or step == 0:
            step += 1
            rt.events = first if step == 1 else []
            gen_step(rt, step, pp=world, microbatches=microbatches,
                     full=full if step == 1 else None)
            body = orjson.dumps(rt.events)[1:-1].replace(b'},{"', b'},\n    {"')
            f.write(sep + body)
            sep = b",\n    "
            written = f.tell()
            counts["events"] += len(rt.events)
            counts["kernels"] += sum(1 for e in rt.events if e.get("cat") == "kernel")
        f.write(
            b'\n  ],\n'
            + f'  "traceName": "{path.name}",\n  "displayTimeUnit": "ms",\n'
              f'  "baseTimeNanoseconds": {BASE_TIME_NS}\n}}\n'.encode()
        )
        counts["steps"] = step
    os.replace(tmp, path)
    return {"rank": rank, "file": path.name, "bytes": path.stat().st_size, **counts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for the trace files")
    ap.add_argument("--ranks", type=int, default=8, help="world size = PP ranks (even, >= 2)")
    ap.add_argument("--target-mb", type=float, default=200.0, help="total size, MB (1e6 B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=4, help="MoE layers per pipeline chunk")
    ap.add_argument("--microbatches", type=int, default=None, help="default: 2 x ranks")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if args.ranks < 2 or args.ranks % 2:
        ap.error(f"--ranks {args.ranks}: DualPipeV needs an even number of ranks >= 2")
    m = args.microbatches or 2 * args.ranks
    if m < 2 * args.ranks:
        ap.error(f"--microbatches {m}: DualPipeV needs at least 2 x ranks ({2 * args.ranks})")
    args.out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in args.out.iterdir() if p.name.endswith((".json", ".json.gz"))]
    if stale:
        ap.error(f"--out {args.out}: already holds {len(stale)} trace file(s); use an empty "
                 "directory (the importer and HTA read every *.json in it)")
    per_rank = int(args.target_mb * 1e6 / args.ranks)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, args.ranks))) as pool:
        futures = [pool.submit(generate_rank, str(args.out), r, args.ranks, per_rank, args.seed,
                               args.layers, m) for r in range(args.ranks)]
        results = [fut.result() for fut in futures]
    total = sum(r["bytes"] for r in results)
    events = sum(r["events"] for r in results)
    kernels = sum(r["kernels"] for r in results)
    print(f"wrote {len(results)} traces to {args.out}: {total / 1e6:.1f} MB, {events} events "
          f"({kernels} kernels), {results[0]['steps']} step(s) per rank, "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
