"""``dualscope import``: Kineto / Chrome trace JSON -> a dualscope run directory."""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from ..errors import InputError, io_error

if TYPE_CHECKING:
    from ..importers import Progress

__all__ = ["command", "gc_paused", "one_blas_thread_by_default", "system_arrow_pool",
           "system_pool_by_default"]


def system_pool_by_default() -> bool:
    """Make the system allocator Arrow's default for this process, when Arrow is not loaded
    yet and the user has not chosen (``ARROW_DEFAULT_MEMORY_POOL``): Arrow's C++ code (IPC
    compression, kernels) allocates from the pool chosen when it first loads, which
    :func:`system_arrow_pool` cannot change afterwards. Measured with ``bench/bench_import.py``
    on the 240 MB set: peak 0.20 -> 0.15 GB with ``--jobs 2``, 0.16 -> 0.13 GB with 1 job. An
    import process owns its allocator, so the command sets it; whether it took effect."""
    return _env_default_before("pyarrow", "ARROW_DEFAULT_MEMORY_POOL", "system")


def one_blas_thread_by_default() -> bool:
    """One OpenBLAS thread for this process, when numpy is not loaded yet and the user has
    not chosen (``OPENBLAS_NUM_THREADS``): the import makes no BLAS call, but numpy's
    OpenBLAS starts a thread per core when it loads, and they spin-wait on a CPU for a while
    (``python -c "import numpy, time; time.sleep(2)"``: 0.22 s of CPU, 0.16 s with one
    thread, on this 2-core VM; perf put ``blas_thread_server`` at 1.9 % of an import's CPU).
    Parallelism is the import's own worker processes. Whether it took effect."""
    return _env_default_before("numpy", "OPENBLAS_NUM_THREADS", "1")


def _env_default_before(module: str, name: str, value: str) -> bool:
    """``$name`` defaults to ``value`` (a user's own setting wins), which takes effect only
    when ``module`` reads it as it loads: False when ``module`` is loaded already."""
    if module in sys.modules:
        return False
    os.environ.setdefault(name, value)
    return True


@contextmanager
def system_arrow_pool() -> Iterator[None]:
    """Build Arrow data with the system allocator while importing: Arrow's default (mimalloc)
    pool keeps the segments of each rank's freed tables, which adds ~35 MB to the peak of a
    rank-by-rank import; the system pool frees them into the heap the next file reuses
    (and the importer's ``malloc_trim`` gives it back to the OS after a file over 256 MB).
    A process-wide setting, so the command makes it, not the library; restored on exit."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around one file's parse: parsing creates millions
    of containers that are never cyclic, and generation scans over them cost a third of the
    parse time. Process-wide, so only the command asks for it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def _progress(total_files: int) -> Iterator[Callable[[Progress], None] | None]:
    """A progress bar of files and MB done over all workers, on stderr when it is a terminal;
    otherwise nothing. Redrawn by the caller's updates (no refresh thread: the import forks
    its workers while the bar is up)."""
    if not sys.stderr.isatty() or total_files == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("importing"), BarColumn(), TextColumn("{task.fields[files]}"),
             TextColumn("{task.fields[mb]}"), TimeElapsedColumn(),
             console=Console(stderr=True), transient=True, auto_refresh=False) as bar:
        task = bar.add_task("", total=1, files="", mb="")
        last = 0.0

        def update(p: Progress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < 0.1 and p.files_done < p.files_total:
                return
            last = now
            bar.update(task, total=max(p.bytes_total, 1), completed=p.bytes_done,
                       files=f"{p.files_done}/{p.files_total} files",
                       mb=f"{p.bytes_done / 1e6:,.0f}/{p.bytes_total / 1e6:,.0f} MB")
            bar.refresh()

        yield update


#: with more files than this, the per-file lines are cut short (all of them are in --json)
_FILE_LINES = 64


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    spans: list[tuple[int, int]] = []
    for r in sorted(ranks):
        if spans and spans[-1][1] == r - 1:
            spans[-1] = (spans[-1][0], r)
        else:
            spans.append((r, r))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _print_summary(d: dict) -> None:
    echo = click.echo
    echo(f"imported {len(d['files'])} trace file(s) into {d['out']} (run {d['run_id']})")
    ws = d["world_size"]
    echo(f"ranks: {_ranges(d['ranks'])}" + (f" of world size {ws}" if ws else ""))
    echo(f"spans: {d['spans']}")
    echo("  by lane: " + ", ".join(f"{k} {v}" for k, v in d["lanes"].items()))
    echo("  by kind: " + ", ".join(f"{k} {v}" for k, v in d["kinds"].items()))
    if d["comm_kernels"]:
        sms = ", ".join(f"{v} x {k} SMs" for k, v in d["comm_kernel_sms"].items())
        echo(f"comm kernels: {d['comm_kernels']} ({sms})")
    cap = d.get("capture")
    if cap:
        echo(f"capture: {cap['describe']}; results of {cap['steps']} steps in derived/steps; "
             f"span rows {cap['rows_before']} -> {cap['rows_after']}")
    files = d["files"]
    shown = files if len(files) <= _FILE_LINES else files[:_FILE_LINES // 2]
    for f in shown:
        streams = ", ".join(f"device {dv} stream {s}" for dv, s in f["comm_streams"])
        line = f"  rank {f['rank']}: {Path(f['path']).name}, {f['spans']} spans"
        line += " (CPU only)" if f["cpu_only"] else ""
        line += f"; comm streams: {streams}" if streams else ""
        echo(line)
        for note in f["notes"]:
            echo(f"    note: {note}")
    if len(shown) < len(files):
        notes = sum(len(f["notes"]) for f in files[len(shown):])
        echo(f"  ... {len(files) - len(shown)} more files ({notes} notes); all in --json")


@click.command("import")
@click.argument("traces", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory to create (must not exist).")
@click.option("--comm-pattern", "comm_patterns", multiple=True, metavar="REGEX",
              help="Kernel-name regex that forces a kernel to communication (repeatable).")
@click.option("--keep-cpu-ops", is_flag=True,
              help="Also keep non-communication cpu_ops (kind cpu_op, lane host).")
@click.option("--sms-per-gpu", type=click.IntRange(min=1), default=None,
              help="SMs of every GPU, overriding the traces' deviceProperties and device "
                   "names (needed for SM figures when a trace has neither).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Files imported at once (processes; with --engine dask, LocalCluster "
                   "workers). Default: the machine's cores.")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local",
              help="Run the per-file tasks here (local) or on a Dask cluster.")
@click.option("--scheduler", default=None, help="Address of a running dask.distributed "
              "scheduler (with --engine dask; the traces and --out must be on storage its "
              "workers share); default: start a LocalCluster.")
@click.option("--trace-every", type=int, default=0, show_default=True,
              help="Capture schedule: after the import, compute every step's results "
                   "(RUN/derived/steps) and keep full spans only for --trace-steps of every "
                   "N steps (0: keep every span).")
@click.option("--trace-steps", type=int, default=1, show_default=True,
              help="Steps per capture window (with --trace-every).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(traces: tuple[Path, ...], out: Path, comm_patterns: tuple[str, ...],
            keep_cpu_ops: bool, sms_per_gpu: int | None, jobs: int | None, engine: str,
            scheduler: str | None, trace_every: int, trace_steps: int, as_json: bool) -> None:
    """Import Kineto / Chrome trace JSON (plain or .gz), one file per rank, or folders of
    them, into a new run directory OUT. Files are imported in parallel (--jobs)."""
    system_pool_by_default()  # before the importer loads Arrow
    one_blas_thread_by_default()  # and numpy
    from ..importers import default_jobs, import_kineto
    from ..importers.discover import find_trace_files

    if scheduler and engine != "dask":
        raise InputError("--scheduler needs --engine dask")
    capture = None
    if trace_every < 0:
        raise InputError(f"--trace-every {trace_every} must be 0 (keep every span) or more")
    if trace_every:
        from ..capture import CaptureSchedule

        capture = CaptureSchedule(every=trace_every, steps=trace_steps)  # checks the values
    n_files = len(find_trace_files(list(traces)))
    try:
        with _progress(n_files) as update, system_arrow_pool():
            summary = import_kineto(traces, out, comm_patterns=comm_patterns,
                                    keep_cpu_ops=keep_cpu_ops, sms_per_gpu=sms_per_gpu,
                                    jobs=jobs or default_jobs(),
                                    engine=engine, scheduler=scheduler, on_progress=update,
                                    around_parse=gc_paused)
    except OSError as e:  # the inputs' errors are named by the importer: this is --out's
        raise io_error(out, e, "write the run") from None
    d = summary.to_dict()
    if capture is not None:
        from ..steps import keep_capture

        try:
            d["capture"] = {"describe": capture.describe(), **keep_capture(out, capture)}
        except OSError as e:
            raise io_error(out, e, "keep the capture windows of the run") from None
    if as_json:
        click.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(d)
