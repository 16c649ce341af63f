"""Importers of foreign traces into a dualscope run directory.

:func:`import_kineto` reads Kineto / Chrome trace JSON (``torch.profiler``), one file per rank,
plain or gzip, and writes one span stream per rank (see :mod:`.spans` for the mapping and
:mod:`.kineto` for the clock). Each file is one task (:mod:`.rankfile`) that writes its rank's
segments into a staging directory inside the run's temporary directory; the tasks run one
after another, in a local process pool or on a Dask cluster (:mod:`.parallel`). The results
are checked against each other in file order (one rank per file, one world size), each
staging directory becomes its rank's stream directory, and the manifest is written once.
Memory per worker stays near one file's bytes plus one chunk of parsed events plus that
rank's columns, whatever the number of ranks.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..classify import compile_patterns
from ..errors import InputError, io_error
from ..manifest import Manifest, Parallel, Topology, fsync_dir
from ..store import atomic_run_dir, rank_dir_name
from .discover import find_trace_files
from .parallel import ENGINES, Progress, default_jobs, run_tasks
from .rankfile import FileResult, FileTask

__all__ = ["ENGINES", "ImportSummary", "Progress", "RankSummary", "default_jobs",
           "import_kineto"]


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


def _summary(r: FileResult) -> RankSummary:
    return RankSummary(path=r.path, rank=r.rank, rank_source=r.rank_source, events=r.events,
                       spans=r.spans, cpu_only=r.cpu_only, lanes=r.lanes, kinds=r.kinds,
                       comm_streams=r.comm_streams, comm_kernel_sms=r.comm_kernel_sms,
                       reasons=r.reasons, notes=r.notes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def import_kineto(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    comm_patterns: Sequence[str] = (),
    keep_cpu_ops: bool = False,
    sms_per_gpu: int | None = None,
    jobs: int = 1,
    engine: str = "local",
    scheduler: str | None = None,
    progress: Callable[[Path, int], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    around_parse: Callable[[], AbstractContextManager[object]] | None = None,
) -> ImportSummary:
    """Import Kineto / Chrome traces (files or folders of them) into a new run at ``out``.

    ``comm_patterns``: regular expressions forcing kernels to communication;
    ``keep_cpu_ops``: also keep non-communication cpu_ops (kind ``cpu_op``, lane ``host``);
    ``sms_per_gpu``: SMs of every GPU, overriding the traces' ``deviceProperties`` and device
    names (:func:`.kernels.device_sms`);
    ``jobs`` / ``engine`` / ``scheduler``: where the per-file tasks run (:mod:`.parallel`;
    the run is the same whichever). ``progress(path, size_bytes)`` is called after each file
    (in file order), ``on_progress(state)`` as files and bytes advance over all workers;
    ``around_parse()`` is entered around each file's parse in the process that parses it
    (the ``import`` command pauses the garbage collector there; a library call changes no
    process-wide state by itself; not applied on Dask workers). Nothing is left at ``out``
    (nor beside it) when any input is bad: raises :class:`InputError` naming the file.
    """
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    out = Path(out)
    _check_out(out)
    try:
        patterns = tuple(p.pattern for p in compile_patterns(comm_patterns))
    except ValueError as e:
        raise InputError(str(e)) from None
    files = find_trace_files(list(inputs))
    sizes = [_size(p) for p in files]
    summaries: list[FileResult] = []
    with atomic_run_dir(out) as tmp:
        staging = tmp / ".staging"
        staging.mkdir()
        tasks = [FileTask(index=i, path=str(p), staging=str(staging / f"{i:06d}"),
                          multi=len(files) > 1, comm_patterns=patterns,
                          keep_cpu_ops=keep_cpu_ops, sms_per_gpu=sms_per_gpu)
                 for i, p in enumerate(files)]
        owner: dict[int, str] = {}
        world: dict[int, str] = {}

        def advanced(state: Progress, res: FileResult | None) -> None:
            if on_progress is not None:
                on_progress(state)
            if res is not None and progress is not None:
                progress(Path(res.path), res.bytes)

        for res in run_tasks(tasks, sizes, engine=engine, jobs=jobs, scheduler=scheduler,
                             around_parse=around_parse, progress=advanced):
            _check_against_others(res, owner, world)
            target = tmp / "spans" / rank_dir_name(res.rank)
            target.parent.mkdir(exist_ok=True)
            os.replace(res.staging, target)
            summaries.append(res)
        shutil.rmtree(staging)
        world_size = next(iter(world), None)
        if world_size is not None and max(owner) >= world_size:
            raise InputError(f"{owner[max(owner)]}: rank {max(owner)} is not below "
                             f"world_size {world_size}; check the file's rank")
        manifest = _manifest(len(files), summaries, world_size, patterns, keep_cpu_ops)
        manifest.status = "finished"
        sync_tree(tmp)  # the segments the tasks wrote, durable before the run appears
        manifest.write(tmp)
    return ImportSummary(out=str(out), run_id=manifest.run_id, world_size=world_size,
                         ranks=[_summary(r) for r in sorted(summaries, key=lambda r: r.rank)])


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux / glibc
        return None
    fn.argtypes = [ctypes.c_int]
    return fn  # type: ignore[no-any-return]


def sync_tree(root: Path) -> None:
    """Make every file under ``root`` durable: one ``syncfs`` of its file system (Linux), else
    an fsync per file and directory. The tasks write without syncing (one sync per segment
    costs more than the parse of a small file)."""
    fn = _syncfs()
    if fn is not None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if fn(fd) == 0:
                return
        finally:
            os.close(fd)
    for base, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(base, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(base)


def _check_out(out: Path) -> None:
    """``out`` must be new and its parent a directory: one line for each way it is not."""
    if os.path.islink(out) and not os.path.exists(out):
        raise InputError(f"{out}: dangling symlink (points to {os.readlink(out)}); remove it or "
                         "choose a new --out path")
    if os.path.lexists(out):
        raise InputError(f"{out}: already exists; choose a new --out path or remove it first")
    parent = out.parent
    try:
        st = os.stat(parent)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{out}: symlink loop in the path; fix the link or choose "
                             "another --out") from None
        if e.errno == errno.ENOENT and os.path.islink(parent):
            raise InputError(f"{out}: {parent} is a dangling symlink (points to "
                             f"{os.readlink(parent)}); fix it or choose another --out") from None
        if e.errno == errno.ENOENT:
            raise InputError(f"{out}: parent directory {parent} does not exist; create it "
                             "first") from None
        if e.errno == errno.ENOTDIR:
            raise InputError(f"{out}: a part of the path is not a directory; choose another "
                             "--out") from None
        raise io_error(out, e, "write the run") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{out}: {parent} is not a directory; choose another --out")


def _check_against_others(res: FileResult, owner: dict[int, str], world: dict[int, str]) -> None:
    if res.rank in owner:
        raise InputError(
            f"{res.path}: claims rank {res.rank}, which {owner[res.rank]} already has; import "
            "one trace per rank (move the duplicate out of the folder)"
        )
    owner[res.rank] = res.path
    ws = res.world_size
    if ws is not None:
        if world and ws not in world:
            other_ws, other = next(iter(world.items()))
            raise InputError(
                f"{res.path}: distributedInfo.world_size {ws} differs from {other_ws} in "
                f"{other}; import the traces of one job only"
            )
        world.setdefault(ws, res.path)


def _manifest(n_files: int, results: list[FileResult], world_size: int | None,
              patterns: tuple[str, ...], keep_cpu_ops: bool) -> Manifest:
    manifest = Manifest(source="import", description=f"Kineto import of {n_files} trace file(s)")
    sms: Counter[int | None] = Counter()
    names: Counter[str | None] = Counter()
    devices: set[int] = set()
    for r in results:
        for d, (n_sms, name) in r.devices.items():
            sms[n_sms] += 1
            names[name] += 1
            devices.add(d)
    # the SMs the kernels were counted with: numSms, the device name's or --sms-per-gpu
    used = Counter(r.sms_per_gpu for r in results if r.sms_per_gpu)
    top_sms = next((s for s, _ in used.most_common()), None)
    manifest.topology = Topology(
        gpus_per_node=len(devices) if devices else None,
        sms_per_gpu=top_sms,
        gpu_name=next((n for n, _ in names.most_common() if n), None),
    )
    manifest.parallel = Parallel(world_size=world_size)
    lanes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for r in results:
        lanes.update(r.lanes)
        kinds.update(r.kinds)
    manifest.extra = {
        "importer": "kineto",
        "files": [{"path": r.path, "rank": r.rank, "rank_source": r.rank_source,
                   "events": r.events, "spans": r.spans, "cpu_only": r.cpu_only,
                   "comm_streams": [list(s) for s in r.comm_streams],
                   "classification": r.reasons, "notes": r.notes}
                  for r in sorted(results, key=lambda r: r.rank)],
        "backend": sorted({r.backend for r in results if r.backend is not None}),
        "comm_patterns": list(patterns),
        "keep_cpu_ops": keep_cpu_ops,
        "sms_per_gpu_unknown_ranks": sorted(r.rank for r in results
                                            if r.sms_per_gpu is None and not r.cpu_only),
        "clock": "unix-epoch ns: round(ts_us * 1000), plus baseTimeNanoseconds when the "
                 "trace's ts are relative to it; ranks not aligned to each other",
        "counts": {"lane": dict(sorted(lanes.items())), "kind": dict(sorted(kinds.items()))},
    }
    return manifest

