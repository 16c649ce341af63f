"""Library calls change no process-wide state (issue 9): the importer neither pauses the
garbage collector nor swaps Arrow's memory pool by itself; the ``import`` command asks for
both, around exactly what it needs, and restores them."""

from __future__ import annotations

import gc
from pathlib import Path

import pyarrow as pa

from profiler.commands.import_cmd import gc_paused, system_arrow_pool
from profiler.importers import import_kineto

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "kineto" / "gpu_streams_and_flows"


def test_library_import_leaves_gc_and_arrow_pool_alone(tmp_path: Path) -> None:
    pool = pa.default_memory_pool().backend_name
    seen: list[tuple[bool, str]] = []

    def progress(_path: Path, _size: int) -> None:
        seen.append((gc.isenabled(), pa.default_memory_pool().backend_name))

    import_kineto([FIXTURE], tmp_path / "run", progress=progress)
    assert seen and all(s == (True, pool) for s in seen), seen
    assert gc.isenabled() and pa.default_memory_pool().backend_name == pool


def test_command_settings_apply_only_inside_and_are_restored(tmp_path: Path) -> None:
    pool = pa.default_memory_pool().backend_name
    during_parse: list[bool] = []

    def around() -> object:
        cm = gc_paused()

        class Probe:
            def __enter__(self) -> None:
                cm.__enter__()
                during_parse.append(gc.isenabled())

            def __exit__(self, *exc: object) -> None:
                cm.__exit__(None, None, None)

        return Probe()

    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == "system"
        import_kineto([FIXTURE], tmp_path / "run", around_parse=around)  # type: ignore[arg-type]
    assert during_parse and not any(during_parse)
    assert gc.isenabled() and pa.default_memory_pool().backend_name == pool


def _child(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("ARROW_DEFAULT_MEMORY_POOL", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_import_command_process_allocates_arrow_from_the_system_pool() -> None:
    """The command's process chooses the system allocator before Arrow loads (the CLI
    itself must not load Arrow first), and a user's own choice is kept."""
    code = ("import sys, dualscope.cli\n"
            "loaded = 'pyarrow' in sys.modules\n"
            "from profiler.commands.import_cmd import system_pool_by_default\n"
            "took = system_pool_by_default()\n"
            "import pyarrow as pa\n"
            "print(loaded, took, pa.default_memory_pool().backend_name)")
    assert _child(code) == "False True system"
    assert _child(code, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "False True mimalloc"
    # too late once Arrow is loaded: says so instead of pretending
    late = ("import pyarrow as pa\n"
            "from profiler.commands.import_cmd import system_pool_by_default\n"
            "print(system_pool_by_default(), pa.default_memory_pool().backend_name)")
    assert _child(late) == "False mimalloc"


def test_import_command_process_starts_no_blas_threads() -> None:
    """The command's process asks numpy's OpenBLAS for one thread before numpy loads (the
    CLI itself must not load numpy first): no threads that spin beside the import's own
    workers. A user's own choice is kept; once numpy is loaded it says it is too late."""
    threads = "len(os.listdir('/proc/self/task'))"
    code = ("import os, sys, dualscope.cli\n"
            "loaded = 'numpy' in sys.modules\n"
            "from profiler.commands.import_cmd import one_blas_thread_by_default\n"
            "took = one_blas_thread_by_default()\n"
            "import numpy\n"
            f"print(loaded, took, {threads})")
    assert _child(code) == "False True 1"
    assert _child(code, OPENBLAS_NUM_THREADS="2") == "False True 2"
    late = ("import os, numpy\n"
            "from profiler.commands.import_cmd import one_blas_thread_by_default\n"
            "print(one_blas_thread_by_default())")
    assert _child(late) == "False"
