"""Periodic short ``torch.profiler`` capture on GPU: the kernels of one step every N steps,
written as spans of kind ``kernel`` with the SMs each held, so the SM split (compute vs
communication) can be drawn for the captured steps.

Only the GPU path uses this; with no CUDA the capture is reported unavailable in the
manifest and :class:`NullCapture` is used. NOT YET RUN ON A GPU (see docs/reference.md).

Conversion: the capture is exported as a Kineto Chrome trace to a temporary file and read by
the one kernel reader, :func:`profiler.importers.kernels.read_kernels` -- the importer's own
parser, clock rule, SM count and comm / compute classification
(:func:`profiler.classify.classify_kernels`: stream, process group and name together). Its
times (Kineto's clock is the host's Unix-epoch clock) get this rank's clock offset added.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from probes.timers import Timers
from profiler.importers.kernels import read_kernels

__all__ = ["NullCapture", "KernelCapture", "kernel_spans"]


class NullCapture:
    def wants(self, step: int) -> bool:
        return False

    @contextlib.contextmanager
    def capture(self, step: int) -> Iterator[None]:
        yield


class KernelCapture:
    """Capture step ``s`` when ``(s + 1) % every == 0`` (never the very first step, which is
    dominated by warm-up); its kernels go to ``timers`` as ready-made spans."""

    def __init__(self, every: int, *, rank: int, timers: Timers, clock_offset_ns: int,
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
            cols = kernel_spans(Path(path), rank=self.rank, step=step, offset_ns=self.offset_ns,
                                sms_per_gpu=self.sms)
        finally:
            os.unlink(path)
        if cols["start_ns"]:
            self.timers.add_rows(cols)
        self.captures += 1


def kernel_spans(trace: str | os.PathLike[str] | Mapping[str, Any], *, rank: int, step: int,
                 offset_ns: int, sms_per_gpu: int) -> dict[str, list[Any]]:
    """Kernel events of one Kineto trace (file or parsed document) as span columns on the run
    clock (``offset_ns`` added), read by :func:`profiler.importers.kernels.read_kernels`."""
    k = read_kernels(trace, sms_per_gpu=sms_per_gpu)
    n = len(k)
    return {
        "rank": [rank] * n,
        "lane": k["lane"].tolist(),
        "kind": ["kernel"] * n,
        "name": k["name"].tolist(),
        "step": [step] * n,
        "start_ns": (k["start_ns"] + offset_ns).tolist(),
        "end_ns": (k["end_ns"] + offset_ns).tolist(),
        "sms": [None if pd.isna(v) else int(v) for v in k["sms"]],
        "stream": k["stream"].tolist(),
        "device": k["device"].tolist(),
    }
