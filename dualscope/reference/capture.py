"""Periodic short ``torch.profiler`` capture on GPU: the kernels of one step every N steps,
written as spans of kind ``kernel`` with the SMs each held, so the SM split (compute vs
communication) can be drawn for the captured steps.

Only the GPU path uses this; with no CUDA the capture is reported unavailable in the
manifest and :class:`NullCapture` is used. NOT YET RUN ON A GPU (see docs/reference.md).

Conversion: the capture is exported as a Kineto Chrome trace to a temporary file; every
``kernel`` event becomes a span with ``start_ns = ts*1000 (+ baseTimeNanoseconds when the
trace is relative to it)`` -- Kineto's clock is the host's Unix-epoch clock -- plus this rank's
clock offset; ``sms = min(grid x*y*z, SMs per GPU)``; the lane (``comm`` or ``compute``) is
decided by :func:`profiler.classify.classify_kernels` (stream, process group and name
together).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from profiler.classify import PG_ARG_KEYS, classify_kernels

__all__ = ["NullCapture", "KernelCapture", "kernel_spans"]


class NullCapture:
    def wants(self, step: int) -> bool:
        return False

    @contextlib.contextmanager
    def capture(self, step: int) -> Iterator[None]:
        yield


class KernelCapture:
    """Capture step ``s`` when ``(s + 1) % every == 0`` (never the very first step, which is
    dominated by warm-up)."""

    def __init__(self, every: int, rank: int, timers: Any, clock_offset_ns: int,
                 sms_per_gpu: int) -> None:
        self.every, self.rank, self.timers = every, rank, timers
        self.offset_ns, self.sms = clock_offset_ns, sms_per_gpu
        self.captures = 0

    def wants(self, step: int) -> bool:
        return self.every > 0 and step > 0 and (step + 1) % self.every == 0

    @contextlib.contextmanager
    def capture(self, step: int) -> Iterator[None]:
        import torch
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            yield
        torch.cuda.synchronize()
        fd, path = tempfile.mkstemp(suffix=".pt.trace.json")
        os.close(fd)
        try:
            prof.export_chrome_trace(path)
            with open(path) as f:
                doc = json.load(f)
        finally:
            os.unlink(path)
        cols = kernel_spans(doc, rank=self.rank, step=step, offset_ns=self.offset_ns,
                            sms_per_gpu=self.sms)
        if cols["start_ns"]:
            self.timers.add_rows(cols)
        self.captures += 1


def kernel_spans(doc: dict[str, Any], *, rank: int, step: int, offset_ns: int,
                 sms_per_gpu: int) -> dict[str, list[Any]]:
    """Kernel events of one Kineto trace document as span columns on the run clock."""
    base = doc.get("baseTimeNanoseconds")
    base = base if isinstance(base, int) and not isinstance(base, bool) else 0
    names, streams, blocks, has_pg, start, end, dev, sid = [], [], [], [], [], [], [], []
    for e in doc.get("traceEvents") or []:
        if not isinstance(e, dict) or e.get("cat") != "kernel" or e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        ts, dur = float(e.get("ts", 0)), float(e.get("dur", 0))
        t0 = round(ts * 1000)
        if base and t0 < base:
            t0 += base
        grid = args.get("grid") or [1, 1, 1]
        n = 1
        for g in grid:
            n *= int(g)
        names.append(str(e.get("name", "")))
        device, stream = int(args.get("device", 0)), int(args.get("stream", 0))
        streams.append((device, stream))
        blocks.append(float(n))
        has_pg.append(any(k in args for k in PG_ARG_KEYS))
        start.append(t0 + offset_ns)
        end.append(t0 + round(dur * 1000) + offset_ns)
        dev.append(device)
        sid.append(stream)
    cls = classify_kernels(names, streams, blocks, has_pg, sms_per_gpu=sms_per_gpu)
    n = len(names)
    return {
        "rank": [rank] * n,
        "lane": ["comm" if c else "compute" for c in cls.is_comm],
        "kind": ["kernel"] * n,
        "name": names,
        "step": [step] * n,
        "start_ns": start,
        "end_ns": end,
        "sms": [int(min(b, sms_per_gpu)) for b in blocks],
        "stream": sid,
        "device": dev,
    }
