"""Small Kineto traces written event by event, for the layouts real torch.profiler output has
(issue 11): steps whose kernels overlap on the GPU, kernels launched before profiling began,
log arrays after ``traceEvents``, capitalised or foreign categories, ns-resolution times."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Trace:
    """One rank's trace. Times are µs (what Kineto writes); ``raw_ts`` keeps them as text."""

    events: list[dict[str, Any]] = field(default_factory=list)
    device_properties: list[dict[str, Any]] | None = field(
        default_factory=lambda: [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "numSms": 132}])
    rank: int = 0
    host_pid: int = 10
    _corr: int = 0

    def step(self, n: int, ts: float, dur: float) -> None:
        self.events.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{n}",
                            "pid": self.host_pid, "tid": self.host_pid, "ts": ts, "dur": dur})

    def annotation(self, name: str, ts: float, dur: float) -> None:
        self.events.append({"ph": "X", "cat": "user_annotation", "name": name,
                            "pid": self.host_pid, "tid": self.host_pid, "ts": ts, "dur": dur})

    def kernel(self, name: str, ts: float, dur: float, *, launch_at: float | None,
               stream: int = 7, grid: tuple[int, int, int] = (132, 1, 1),
               cat: str = "kernel", launch_cat: str = "cuda_runtime") -> None:
        """A kernel; ``launch_at``: its cudaLaunchKernel's time (None: no launch in the trace,
        as for a kernel launched before profiling began)."""
        self._corr += 1
        corr = self._corr
        if launch_at is not None:
            self.events.append({"ph": "X", "cat": launch_cat, "name": "cudaLaunchKernel",
                                "pid": self.host_pid, "tid": self.host_pid, "ts": launch_at,
                                "dur": 1, "args": {"correlation": corr}})
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream,
                            "ts": ts, "dur": dur,
                            "args": {"device": 0, "stream": stream,
                                     "correlation": corr if launch_at is not None else 10**6 + corr,
                                     "grid": list(grid), "block": [128, 1, 1]}})

    def document(self, **after: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 1,
                               "distributedInfo": {"rank": self.rank, "world_size": 1}}
        if self.device_properties is not None:
            doc["deviceProperties"] = self.device_properties
        doc["traceEvents"] = self.events
        doc.update(after)
        return doc

    def write(self, path: Path, **after: Any) -> Path:
        """Write the trace; ``after``: top-level members written after ``traceEvents``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document(**after)))
        return path
