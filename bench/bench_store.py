"""What the store's checksums cost the writer, and what checking them costs the reader.

The writer's CRC is computed on the bytes Arrow hands to the segment file (CPU seconds of this process, steadier than wall time on a shared machine) (one Python call per
IPC buffer) and one 16-byte sidecar record is appended per flush. This bench writes the same
spans through the real :class:`~profiler.store.StreamWriter` twice in one process, alternating,
once as shipped and once with the checksum sink replaced by a pass-through (same Python-level
file wrapper, no CRC, no sidecar), and reports the ratio of write times; then reads the result
with checks on (as shipped) and off (structure validation only) and reports that ratio.

    .venv/bin/python bench/bench_store.py --batches 400 --rows 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import profiler.store.integrity as integrity
import profiler.store.writer as writer_mod
from profiler.manifest import Manifest
from profiler.schema import SPAN_SCHEMA, spans_table
from profiler.store import RunReader, RunWriter


class _NoChecksum(integrity.ChecksumSink):
    def write(self, b: Any) -> int:
        mv = memoryview(b)
        self.pos += mv.nbytes
        self._data.write(mv)
        return mv.nbytes

    def record(self, fsync: bool) -> None:
        self._data.flush()


def _batch(rows: int, t0: int, rng: np.random.Generator) -> Any:
    start = t0 + np.cumsum(rng.integers(1_000, 50_000, rows))
    return spans_table({
        "rank": np.zeros(rows, dtype=np.int32), "lane": ["compute"] * rows,
        "kind": ["kernel"] * rows, "name": [f"gemm_{i % 13}" for i in range(rows)],
        "step": np.full(rows, t0 // 10**9, dtype=np.int64), "start_ns": start,
        "end_ns": start + rng.integers(500, 40_000, rows), "sms": np.full(rows, 112),
    })


def _write(out: Path, batches: list[Any], checksum: bool) -> float:
    writer_mod.ChecksumSink = integrity.ChecksumSink if checksum else _NoChecksum  # type: ignore[misc]
    t = time.process_time()
    with RunWriter(out, Manifest(source="synthetic", synthetic=True), rotate_s=3600,
                   flush_s=0, fsync=False) as w:
        s = w.spans(0)
        for b in batches:
            s.write(b)
    return time.process_time() - t


def _read(out: Path) -> float:
    t = time.process_time()
    RunReader(out).span_table()
    return time.process_time() - t


def _crc_alone(batches: list[Any]) -> float:
    """CPU seconds of zlib.crc32 over the same bytes the segment holds (the floor)."""
    import io
    import zlib

    import pyarrow.ipc as ipc

    buf = io.BytesIO()
    with ipc.new_stream(buf, SPAN_SCHEMA, options=writer_mod.IPC_OPTIONS) as w:
        for b in batches:
            w.write_table(b)
    data = buf.getvalue()
    t = time.process_time()
    zlib.crc32(data)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--rows", type=int, default=1000, help="rows per flush")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    batches = [_batch(args.rows, i * 10**7, rng) for i in range(args.batches)]
    times: dict[str, list[float]] = {"on": [], "off": [], "read_on": [], "read_off": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        for i in range(args.repeat):
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                out = tmp / f"{mode}{i}"
                times[mode].append(_write(out, batches, mode == "on"))
            times["read_on"].append(_read(tmp / f"on{i}"))
            for side in (tmp / f"on{i}").rglob("*.crc"):  # the same bytes, checks off
                side.unlink()
            times["read_off"].append(_read(tmp / f"on{i}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the machine is shared: pair each checked write with the plain one next to it
    pair = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
    pair_read = statistics.median(a / b for a, b in zip(times["read_on"], times["read_off"],
                                                        strict=True))
    size_mb = args.batches * args.rows
    res = {"batches": args.batches, "rows_per_batch": args.rows, "repeat": args.repeat,
           "write_s_checksum": round(med["on"], 4), "write_s_plain": round(med["off"], 4),
           "write_cost_ratio": round(pair, 4),
           "read_s_checked": round(med["read_on"], 4), "read_s_unchecked": round(med["read_off"], 4),
           "read_cost_ratio": round(pair_read, 4), "rows": size_mb,
           "crc32_s": round(_crc_alone(batches), 4)}
    print(json.dumps(res, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
