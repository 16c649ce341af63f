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
