"""Import in parallel (issue 14): the same run from ``--jobs 1``, ``--jobs 2`` and
``--engine dask``; progress over all workers; the first failing file reported, nothing left
behind; memory bounded whatever the layout; no pandas in the import path."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from profiler.errors import InputError
from profiler.importers import Progress, import_kineto
from profiler.importers.arrowcols import ints, nullable, strings
from profiler.store import RunReader

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "bench" / "gen_kineto.py"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four ranks of a DualPipeV trace set (bench/gen_kineto.py, seeded), ~0.5 MB each."""
    out = tmp_path_factory.mktemp("kineto")
    subprocess.run([sys.executable, str(GEN), "--out", str(out), "--ranks", "4",
                    "--target-mb", "2", "--layers", "1", "--jobs", "1"], check=True,
                   capture_output=True)
    return out


def _same_runs(a: Path, b: Path) -> None:
    """Same spans in the same order per rank; same manifest apart from its id and time."""
    ra, rb = RunReader(a), RunReader(b)
    assert ra.ranks() == rb.ranks()
    for rank in ra.ranks():
        assert ra.span_table([rank]).equals(rb.span_table([rank])), rank
    ma, mb = (orjson.loads((p / "manifest.json").read_bytes()) for p in (a, b))
    for m in (ma, mb):
        del m["run_id"], m["created_unix_ns"]
    assert ma == mb


def test_jobs_give_the_same_run(traces: Path, tmp_path: Path) -> None:
    one = import_kineto([traces], tmp_path / "one", jobs=1)
    two = import_kineto([traces], tmp_path / "two", jobs=2)
    assert [r.rank for r in one.ranks] == [0, 1, 2, 3]
    _same_runs(tmp_path / "one", tmp_path / "two")
    assert one.to_dict()["files"] == two.to_dict()["files"]


def test_dask_gives_the_same_run(traces: Path, tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    import_kineto([traces], tmp_path / "one", jobs=1)
    import_kineto([traces], tmp_path / "dask", engine="dask", jobs=2)
    _same_runs(tmp_path / "one", tmp_path / "dask")


def test_workers_start_with_the_parents_objects_frozen(traces: Path, tmp_path: Path) -> None:
    """The parent's objects are in the collector's permanent generation in each forked
    worker (a worker's collections do not write to them, so their pages stay shared), and
    the parent is unfrozen again once the workers have started."""
    seen = tmp_path / "freeze"
    seen.mkdir()

    @contextlib.contextmanager
    def record() -> Iterator[None]:
        (seen / f"{os.getpid()}-{time.monotonic_ns()}").write_text(str(gc.get_freeze_count()))
        yield

    before = gc.get_freeze_count()
    import_kineto([traces], tmp_path / "run", jobs=2, around_parse=record)
    counts = [(p.name.split("-")[0], int(p.read_text())) for p in seen.iterdir()]
    assert len(counts) == 4 and all(pid != str(os.getpid()) for pid, _ in counts)
    assert all(n > 1000 for _, n in counts), counts
    assert gc.get_freeze_count() == before


def test_workers_take_the_largest_files_first(traces: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are handed out largest first (the last to finish is a small one); results,
    progress and the run still follow file order."""
    from profiler.importers import parallel

    files = sorted(traces.iterdir())
    padded = tmp_path / "traces"
    padded.mkdir()
    for i, p in enumerate(files):  # trailing blanks: the later the file, the larger
        (padded / p.name).write_bytes(p.read_bytes() + b" " * (i * 200_000))
    log = tmp_path / "started"
    real = parallel.import_file

    def logged(task: Any, **kw: Any) -> Any:  # runs in the forked workers
        with open(log, "a") as f:
            f.write(Path(task.path).name + "\n")
        return real(task, **kw)

    monkeypatch.setattr(parallel, "import_file", logged)
    done: list[str] = []
    import_kineto([padded], tmp_path / "run", jobs=2,
                  progress=lambda path, size: done.append(path.name))
    started = log.read_text().split()
    names = [p.name for p in files]
    assert set(started[:2]) == {names[3], names[2]} and set(started[2:]) == {names[1], names[0]}
    assert done == names
    import_kineto([traces], tmp_path / "ref")  # the same spans as the unpadded files'
    ra, rb = RunReader(tmp_path / "run"), RunReader(tmp_path / "ref")
    assert ra.ranks() == rb.ranks() == [0, 1, 2, 3]
    assert all(ra.span_table([r]).equals(rb.span_table([r])) for r in ra.ranks())


def test_progress_counts_files_and_bytes_over_workers(traces: Path, tmp_path: Path) -> None:
    states: list[tuple[int, int, int, int]] = []
    done: list[tuple[str, int]] = []

    def on_progress(p: Progress) -> None:
        states.append((p.files_done, p.files_total, p.bytes_done, p.bytes_total))

    import_kineto([traces], tmp_path / "run", jobs=2, on_progress=on_progress,
                  progress=lambda path, size: done.append((path.name, size)))
    files = sorted(traces.iterdir())
    total = sum(p.stat().st_size for p in files)
    assert done == [(p.name, p.stat().st_size) for p in files]  # in file order
    assert states[-1] == (4, 4, total, total)
    assert all(a[0] <= b[0] and a[2] <= b[2] for a, b in zip(states, states[1:], strict=False))


def test_first_failing_file_is_reported_and_nothing_left(traces: Path, tmp_path: Path) -> None:
    bad = tmp_path / "traces"
    bad.mkdir()
    for i, p in enumerate(sorted(traces.iterdir())):
        data = p.read_bytes()
        if i in (1, 3):  # two broken files: the first in file order is the one named
            data = data[: len(data) // 2]
        (bad / p.name).write_bytes(data)
    names = sorted(p.name for p in bad.iterdir())
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    for jobs in (1, 2, 4):
        with pytest.raises(InputError, match=f"{names[1]}: invalid or truncated JSON"):
            import_kineto([bad], out, jobs=jobs)
        assert list(out.parent.iterdir()) == []


def test_cli_jobs_and_options(traces: Path, tmp_path: Path, cli_env: dict[str, str],
                              python: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "dualscope", "import", str(traces), *args],
                              env=cli_env, capture_output=True, text=True, timeout=300)

    one, two = run("--out", str(tmp_path / "a"), "--json", "--jobs", "1"), run(
        "--out", str(tmp_path / "b"), "--json", "--jobs", "2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    da, db = json.loads(one.stdout), json.loads(two.stdout)
    for d in (da, db):
        del d["out"], d["run_id"]
    assert da == db
    for args, reason in ((("--jobs", "0"), "--jobs"),
                         (("--scheduler", "tcp://x:1"), "--scheduler needs --engine dask")):
        p = run("--out", str(tmp_path / "c"), *args)
        assert p.returncode == 2 and reason in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "c").exists()


def test_the_import_does_not_load_pandas(traces: Path, tmp_path: Path,
                                         cli_env: dict[str, str], python: str) -> None:
    """pyarrow imports pandas on its first ``pa.array`` of a list: ~0.35 s and ~40 MB per
    worker process. The importer builds its Arrow columns from buffers instead."""
    code = ("import sys; from profiler.importers import import_kineto; "
            f"import_kineto([{str(traces)!r}], {str(tmp_path / 'run')!r}, jobs=1, "
            "keep_cpu_ops=True); print('pandas' in sys.modules)")
    p = subprocess.run([python, "-c", code], env=cli_env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_arrow_columns_match_pa_array() -> None:
    values = ["a", None, "bé", "a", "", None, "x" * 300, "a"]
    for vals in (values, [], ["k"] * 5, [None] * 3, ["only"], [""] * 4):
        assert strings(vals).equals(pa.array(vals, type=pa.string())), vals
    v = np.array([3, -1, 5, 0], np.int64)
    assert nullable(v, pa.int32()).equals(pa.array(v, type=pa.int32(), mask=v < 0))
    assert ints(v).equals(pa.array(v)) and ints(v, pa.int32()).equals(pa.array(v, pa.int32()))
    with pytest.raises(OverflowError):
        ints(np.array([1 << 40]), pa.int32())


# -- memory -----------------------------------------------------------------------------------
def _kineto(events: int) -> dict:
    ev = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 1, "tid": 1,
           "ts": 0, "dur": events * 3.0}]
    for i in range(events):
        ev.append({"ph": "X", "cat": "kernel", "name": f"gemm_{i % 13}", "pid": 0, "tid": 7,
                   "ts": 1.0 + 3 * i, "dur": 2.0, "args": {
                       "device": 0, "stream": 7, "correlation": i, "grid": [132, 1, 1],
                       "registers per thread": 168, "shared memory": 232448,
                       "blocks per SM": 1.0, "warps per SM": 12.0}})
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, "numSms": 132}],
            "distributedInfo": {"rank": 0, "world_size": 1}, "traceEvents": ev}


def _peak(path: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        import_kineto([path], out, jobs=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_depend_on_layout_or_log_size(tmp_path: Path) -> None:
    """Log arrays after (or before) ``traceEvents`` are never parsed into objects, nor held
    whole: they are skipped a window at a time, so the peak does not grow with them and stays
    within a few windows of the plain file's. (Peak of Python-tracked memory, which covers the
    file window, the parsed events and numpy columns.)"""
    doc = _kineto(15_000)
    plain = tmp_path / "plain.json"
    plain.write_bytes(orjson.dumps(doc))
    peaks = {"plain": _peak(plain, tmp_path / "run-plain")}
    sizes = {}
    for n in (150_000, 600_000):
        logs = [{"level": "INFO", "msg": f"step {i} ]}} done", "args": [i, "]"]}
                for i in range(n)]
        for layout in ("after", "before"):
            path = tmp_path / f"{layout}{n}.json"
            both = {**doc, "INFO": logs} if layout == "after" else {"INFO": logs, **doc}
            path.write_bytes(orjson.dumps(both))
            sizes[f"{layout}{n}"] = path.stat().st_size
            peaks[f"{layout}{n}"] = _peak(path, tmp_path / f"run-{layout}{n}")
        del logs
    for layout in ("after", "before"):
        small, big = peaks[f"{layout}150000"], peaks[f"{layout}600000"]
        assert big < small + (2 << 20), (layout, peaks)  # 4x the logs, no more memory
        assert big < peaks["plain"] + (16 << 20), (layout, peaks)  # a few windows
    # parsing the whole file at once, as a fallback used to, costs many times more
    tracemalloc.start()
    try:
        whole = orjson.loads((tmp_path / "after150000.json").read_bytes())
        whole_peak = tracemalloc.get_traced_memory()[1]
        del whole
    finally:
        tracemalloc.stop()
    assert peaks["after150000"] < 0.25 * whole_peak, (peaks, whole_peak)


# -- workers that die, signals to the parent ----------------------------------------------------
def _big_set(root: Path, ranks: int = 4, events: int = 60_000) -> Path:
    d = root / "big"
    d.mkdir()
    for r in range(ranks):
        doc = _kineto(events)
        doc["distributedInfo"] = {"rank": r, "world_size": ranks}
        (d / f"rank{r}.json").write_bytes(orjson.dumps(doc))
    return d


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _start(traces: Path, out: Path, cli_env: dict[str, str], python: str
           ) -> subprocess.Popen[str]:
    proc = subprocess.Popen([python, "-m", "dualscope", "import", str(traces), "--out",
                             str(out), "--jobs", "2"], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_children(proc.pid)) < 2:
        time.sleep(0.01)
    time.sleep(0.3)  # the workers are parsing
    return proc


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_fails_the_import_cleanly(tmp_path: Path, cli_env: dict[str, str],
                                                  python: str) -> None:
    traces = _big_set(tmp_path)
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    proc = _start(traces, out, cli_env, python)
    workers = _children(proc.pid)
    assert workers, "no worker processes"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "died" in err and len(err.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_stops_the_workers_and_cleans_up(sig: signal.Signals, tmp_path: Path,
                                                  cli_env: dict[str, str],
                                                  python: str) -> None:
    traces = _big_set(tmp_path)
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    proc = _start(traces, out, cli_env, python)
    workers = _children(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert list(out.parent.iterdir()) == []
    time.sleep(0.2)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], "workers left running"
