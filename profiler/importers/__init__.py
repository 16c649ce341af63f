"""Importers of foreign traces into a dualscope run directory.

:func:`import_kineto` reads Kineto / Chrome trace JSON (``torch.profiler``), one file per rank,
plain or gzip, and writes one span stream per rank (see :mod:`.spans` for the mapping and
:mod:`.kineto` for the clock). Files are processed one at a time and their parsed JSON is
dropped before the next, so memory stays near the size of the largest single trace.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..classify import compile_patterns
from ..errors import InputError
from ..manifest import Manifest, Parallel, Topology
from ..store import RunWriter, atomic_run_dir
from .discover import TraceSource, find_trace_files, load_trace, rank_from_filename
from .jsonscan import ChunkingFailed
from .kineto import RawTrace, extract, extract_flows
from .spans import DEFAULT_SMS, build_spans

__all__ = ["ImportSummary", "RankSummary", "import_kineto"]


@dataclass
class RankSummary:
    """What one trace file contributed. Counts are span rows; ``comm_kernel_sms`` maps an
    SM count (SMs held) to the number of communication kernels holding that many."""

    path: str
    rank: int
    rank_source: str
    events: int
    spans: int
    cpu_only: bool
    lanes: dict[str, int]
    kinds: dict[str, int]
    comm_streams: list[tuple[int, int]]
    comm_kernel_sms: dict[int, int]
    reasons: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportSummary:
    out: str
    run_id: str
    world_size: int | None
    ranks: list[RankSummary]

    def to_dict(self) -> dict[str, Any]:
        lanes: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        sms: Counter[int] = Counter()
        for r in self.ranks:
            lanes.update(r.lanes)
            kinds.update(r.kinds)
            sms.update(r.comm_kernel_sms)
        return {
            "out": self.out,
            "run_id": self.run_id,
            "world_size": self.world_size,
            "ranks": [r.rank for r in self.ranks],
            "spans": sum(r.spans for r in self.ranks),
            "lanes": dict(sorted(lanes.items())),
            "kinds": dict(sorted(kinds.items())),
            "comm_kernels": sum(sms.values()),
            "comm_kernel_sms": {str(k): v for k, v in sorted(sms.items())},
            "files": [
                {
                    "path": r.path, "rank": r.rank, "rank_source": r.rank_source,
                    "events": r.events, "spans": r.spans, "cpu_only": r.cpu_only,
                    "lanes": r.lanes, "kinds": r.kinds,
                    "comm_streams": [list(s) for s in r.comm_streams],
                    "comm_kernel_sms": {str(k): v for k, v in sorted(r.comm_kernel_sms.items())},
                    "classification": r.reasons, "notes": r.notes,
                }
                for r in self.ranks
            ],
        }


def _int_or_none(v: object) -> int | None:
    """A non-negative int from an int or a digit string, else None."""
    if type(v) is int:
        return v if v >= 0 else None
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


def _dist_info(meta: dict[str, Any]) -> dict[str, Any]:
    info = meta.get("distributedInfo")
    return info if isinstance(info, dict) else {}


def _resolve_rank(path: Path, meta: dict[str, Any], multi: bool) -> tuple[int, str, list[str]]:
    dist = _dist_info(meta)
    from_info = _int_or_none(dist.get("rank"))
    from_name = rank_from_filename(path)
    notes: list[str] = []
    if from_info is not None:
        if from_name is not None and from_name != from_info:
            notes.append(f"file name says rank {from_name}, distributedInfo.rank {from_info}; "
                         "used distributedInfo")
        return from_info, "distributedInfo", notes
    if from_name is not None:
        notes.append(f"no distributedInfo.rank; rank {from_name} taken from the file name")
        return from_name, "file name", notes
    if multi:
        stem = path.name.split(".")[0]
        raise InputError(
            f"{path}: no rank (no distributedInfo.rank and no rank in the file name); rename it "
            f"to {stem}_rank<N>{path.name[len(stem):]}"
        )
    notes.append("no distributedInfo.rank and no rank in the file name; single file taken as rank 0")
    return 0, "default", notes


def import_kineto(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    comm_patterns: Sequence[str] = (),
    keep_cpu_ops: bool = False,
    progress: Callable[[Path, int], None] | None = None,
    around_parse: Callable[[], AbstractContextManager[object]] | None = None,
) -> ImportSummary:
    """Import Kineto / Chrome traces (files or folders of them) into a new run at ``out``.

    ``comm_patterns``: regular expressions forcing kernels to communication;
    ``keep_cpu_ops``: also keep non-communication cpu_ops (kind ``cpu_op``, lane ``host``);
    ``progress(path, size_bytes)`` is called after each file; ``around_parse()`` is entered
    around each file's parse (the ``import`` command pauses the garbage collector there; a
    library call changes no process-wide state by itself). Nothing is left at ``out`` (nor
    beside it) when any input is bad: raises :class:`InputError` naming the file.
    """
    try:
        patterns = compile_patterns(comm_patterns)
    except ValueError as e:
        raise InputError(str(e)) from None
    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new --out path or remove it first")
    files = find_trace_files(list(inputs))
    multi = len(files) > 1
    manifest = Manifest(source="import", description=f"Kineto import of {len(files)} trace file(s)")
    summaries: list[RankSummary] = []
    owner: dict[int, Path] = {}
    world: dict[int, Path] = {}
    backend: set[str] = set()
    gpus: dict[str, Any] = {}
    sms_default = False
    with atomic_run_dir(out) as tmp:
        # one rank is written whole, then its stream is sealed: no time-based rotation
        writer = RunWriter(tmp, manifest, rotate_s=3600.0, flush_s=3600.0, batch_rows=1 << 20)
        for path in files:
            src = load_trace(path)
            meta = src.meta
            rank, source, notes = _resolve_rank(path, meta, multi)
            if rank in owner:
                raise InputError(
                    f"{path}: claims rank {rank}, which {owner[rank]} already has; import "
                    "one trace per rank (move the duplicate out of the folder)"
                )
            owner[rank] = path
            dist = _dist_info(meta)
            ws = _int_or_none(dist.get("world_size"))
            if ws is not None:
                if world and ws not in world:
                    other_ws, other = next(iter(world.items()))
                    raise InputError(
                        f"{path}: distributedInfo.world_size {ws} differs from {other_ws} in "
                        f"{other}; import the traces of one job only"
                    )
                world.setdefault(ws, path)
            if isinstance(dist.get("backend"), str):
                backend.add(dist["backend"])
            raw = _extract(src, keep_cpu_ops, around_parse or nullcontext)
            del src, meta
            for d, info in raw.devices.items():
                gpus.setdefault("sms", Counter())[info.sms] += 1
                gpus.setdefault("names", Counter())[info.name] += 1
                gpus.setdefault("count", set()).add(d)
            res = build_spans(raw, rank, comm_patterns=patterns, keep_cpu_ops=keep_cpu_ops)
            n_events = raw.n_events
            del raw
            sms_default |= res.sms_default_used
            table = res.table
            writer.spans(rank).write(table)
            writer.spans(rank).close()
            lanes = Counter(table.column("lane").to_pylist())
            kinds = Counter(table.column("kind").to_pylist())
            summaries.append(RankSummary(
                path=str(path), rank=rank, rank_source=source, events=n_events,
                spans=table.num_rows, cpu_only=res.cpu_only, lanes=dict(sorted(lanes.items())),
                kinds=dict(sorted(kinds.items())), comm_streams=res.comm_streams,
                comm_kernel_sms=res.comm_kernel_sms, reasons=res.reasons,
                notes=notes + res.notes,
            ))
            del table, res
            _trim_heap()
            if progress is not None:
                progress(path, path.stat().st_size)
        world_size = next(iter(world), None)
        if world_size is not None and max(owner) >= world_size:
            raise InputError(f"{owner[max(owner)]}: rank {max(owner)} is not below "
                             f"world_size {world_size}; check the file's rank")
        _fill_manifest(manifest, gpus, world_size, backend, sms_default, summaries,
                       patterns, keep_cpu_ops)
        writer.close()
    return ImportSummary(out=str(out), run_id=manifest.run_id, world_size=world_size,
                         ranks=sorted(summaries, key=lambda r: r.rank))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def _trim_heap() -> None:
    """Hand the heap freed by the last rank back to the OS (glibc ``malloc_trim``, as Dask
    workers do), so the next rank's peak is not stacked on fragments of this one's."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _extract(src: TraceSource, keep_cpu_ops: bool,
             around_parse: Callable[[], AbstractContextManager[object]]) -> RawTrace:
    with around_parse():
        try:
            raw = extract(src.path, src.meta, src.chunks(), keep_cpu_ops=keep_cpu_ops)
        except ChunkingFailed:
            src = src.parse_whole()
            raw = extract(src.path, src.meta, src.chunks(), keep_cpu_ops=keep_cpu_ops)
        if raw.n_flows and -1 in raw.g_corr:
            # a GPU event without correlation id: link it through its ac2g flow
            extract_flows(raw, src.chunks())
        src.release()
    if raw.n_events == 0:
        raise InputError(f"{src.path}: traceEvents is empty; nothing to import")
    return raw


def _fill_manifest(manifest: Manifest, gpus: dict[str, Any], world_size: int | None,
                   backend: set[str], sms_default: bool, summaries: list[RankSummary],
                   patterns: tuple[re.Pattern[str], ...], keep_cpu_ops: bool) -> None:
    sms = gpus.get("sms", Counter())
    names = gpus.get("names", Counter())
    top_sms = next((s for s, _ in sms.most_common() if s), None)
    manifest.topology = Topology(
        gpus_per_node=len(gpus["count"]) if gpus.get("count") else None,
        sms_per_gpu=top_sms if top_sms is not None else (DEFAULT_SMS if sms_default else None),
        gpu_name=next((n for n, _ in names.most_common() if n), None),
    )
    manifest.parallel = Parallel(world_size=world_size)
    lanes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for r in summaries:
        lanes.update(r.lanes)
        kinds.update(r.kinds)
    manifest.extra = {
        "importer": "kineto",
        "files": [{"path": r.path, "rank": r.rank, "rank_source": r.rank_source,
                   "events": r.events, "spans": r.spans, "cpu_only": r.cpu_only,
                   "comm_streams": [list(s) for s in r.comm_streams],
                   "classification": r.reasons, "notes": r.notes}
                  for r in sorted(summaries, key=lambda r: r.rank)],
        "backend": sorted(backend),
        "comm_patterns": [p.pattern for p in patterns],
        "keep_cpu_ops": keep_cpu_ops,
        "sms_per_gpu_default_used": sms_default,
        "clock": "unix-epoch ns: round(ts_us * 1000), plus baseTimeNanoseconds when the "
                 "trace's ts are relative to it; ranks not aligned to each other",
        "counts": {"lane": dict(sorted(lanes.items())), "kind": dict(sorted(kinds.items()))},
    }
