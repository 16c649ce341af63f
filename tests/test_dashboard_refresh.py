"""Where a live run's stale views are computed again: in a forked child at the lowest CPU
priority (:func:`dashboard.refresh.compute_apart`), its value sent back to the server; what
the child cannot deliver is computed on the refresh thread instead. Real forks, no doubles."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dashboard import refresh
from dashboard.data import DataService
from dashboard.defaults import REFRESH_APART_MIN_S
from dashboard.refresh import ApartLost, apart_possible, compute_apart, refresh_later
from profiler.synthetic import SyntheticConfig, write_run


def _burn(s: float) -> None:
    t = time.thread_time()
    while time.thread_time() - t < s:
        pass


def test_a_view_is_computed_in_a_child_at_the_lowest_priority() -> None:
    lock = threading.RLock()
    pid, nice, got = compute_apart(lambda a: (os.getpid(), os.nice(0), a * 2), 21, lock)
    assert pid != os.getpid() and nice == 19 and got == 42
    assert os.nice(0) < 19  # the server itself keeps its priority


def test_the_childs_error_is_raised_in_the_server() -> None:
    def boom(_: object) -> None:
        raise ValueError("broken view")

    with pytest.raises(ValueError, match="broken view"):
        compute_apart(boom, None, threading.RLock())


@pytest.mark.parametrize("how", ["exit", "kill", "unpicklable"])
def test_a_child_that_delivers_nothing_is_lost(how: str) -> None:
    import signal

    def fn(_: object) -> object:
        if how == "exit":
            os._exit(3)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return threading.Lock()  # cannot be pickled

    with pytest.raises(ApartLost):
        compute_apart(fn, None, threading.RLock())


def test_a_child_that_hangs_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresh, "APART_TIMEOUT_S", 0.5)
    t = time.monotonic()
    with pytest.raises(ApartLost):
        compute_apart(lambda _: time.sleep(30), None, threading.RLock())
    assert time.monotonic() - t < 10


def test_the_lock_the_view_takes_is_free_in_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread holds the run's lock when the refresh forks: the fork waits for it (the
    child would otherwise inherit it held by a thread that does not exist there, and hang)."""
    monkeypatch.setattr(refresh, "APART_TIMEOUT_S", 10.0)
    lock = threading.RLock()
    held = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            time.sleep(0.3)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)

    def fn(_: object) -> str:
        with lock:  # as RunData.derived does for the views a view is made of
            return "done"

    assert compute_apart(fn, None, lock) == "done"
    t.join()


def test_the_rest_counts_the_childs_cpu() -> None:
    """The refresh thread rests as long as the child it waited for computed (duty 0.5):
    computing apart does not let the refresh take more than its share of a core."""
    marks: list[float] = []
    done = threading.Event()

    def first() -> None:
        compute_apart(lambda _: _burn(0.3), None, threading.RLock())
        marks.append(time.monotonic())

    def second() -> None:
        marks.append(time.monotonic())
        done.set()

    refresh_later(first, 0.5)
    refresh_later(second, 0.5)
    assert done.wait(20)
    assert marks[1] - marks[0] >= 0.3 * 0.9


def test_only_views_dearer_than_a_fork_go_apart() -> None:
    assert not apart_possible(None)  # never computed: its caller waits for it
    assert not apart_possible(REFRESH_APART_MIN_S / 2)
    assert apart_possible(REFRESH_APART_MIN_S)


@pytest.fixture(scope="module")
def svc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "small", SyntheticConfig(nodes=1, gpus_per_node=4, pp=4, microbatches=8,
                                              steps=2, experts=8, straggler_rank=-1,
                                              degraded_rank=-1))
    return root


@pytest.mark.parametrize("apart", [True, False])
def test_a_live_runs_stale_view_is_computed_apart(svc_dir: Path, apart: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run's stale view that cost more than a fork is computed again in a child (its
    pid is not the server's) and the next caller takes that value; with
    ``refresh_apart=False`` on the server's refresh thread. The first computation of a view
    is always where it is asked: its caller waits for it."""
    svc = DataService(str(svc_dir), prometheus=None, refresh_apart=apart)
    rd, snap = svc.snapshot("small")
    live = dataclasses.replace(snap, manifest=dataclasses.replace(snap.manifest, status="live"))
    monkeypatch.setattr(rd, "_snap", live)

    def where(_: Any) -> tuple[int, str]:
        _burn(REFRESH_APART_MIN_S * 1.5)
        return os.getpid(), threading.current_thread().name

    first = rd.derived("where", live, where)
    assert first == (os.getpid(), threading.current_thread().name)
    newer = dataclasses.replace(live, version=("newer", live.version))
    rd._snap = newer  # noqa: SLF001  # as if read by a tick
    time.sleep(3 * REFRESH_APART_MIN_S * 1.5 + 0.05)  # past 3x its cost: stale
    assert rd.derived("where", newer, where) == first  # the value it has, at once
    deadline = time.monotonic() + 20
    while rd.derived("where", newer, where) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    pid, thread = rd.derived("where", newer, where)
    assert thread == refresh.REFRESH_THREAD
    assert (pid != os.getpid()) if apart else (pid == os.getpid())
    assert [r[3] for r in rd.refreshes if r[0] == "where"] == [False, True]


def test_a_big_live_run_is_read_behind_the_callers_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run whose last read was dear is read again on a thread of its own: callers take
    the snapshot they have at once, and neither they nor the derived values wait for the
    read (it does not hold the run's lock); the new rows come with the next call after it;
    a read that fails is raised to the next caller."""
    from dashboard import data
    from profiler.errors import RunFormatError
    from profiler.manifest import Manifest
    from profiler.store import RunWriter

    monkeypatch.setattr(data, "READ_BEHIND_MIN_S", 0.0)  # every read of this run is "dear"
    root = tmp_path / "runs"
    w = RunWriter(root / "live", Manifest(source="probe"), rotate_s=60, flush_s=0)

    def span(rank: int) -> None:
        w.write_spans({"rank": [rank], "lane": ["compute"], "kind": ["action"],
                       "name": ["a"], "start_ns": [rank * 10], "end_ns": [rank * 10 + 5]})
        w.flush()

    span(0)
    svc = DataService(str(root), live_reload_s=0.05, prometheus=None)
    rd, snap1 = svc.snapshot("live")  # the first read is the caller's
    assert len(snap1.spans) == 1
    gate, entered = threading.Event(), threading.Event()
    real = rd.reader.refresh_manifest

    def slow_manifest() -> Any:
        entered.set()
        assert gate.wait(20)
        return real()

    monkeypatch.setattr(rd.reader, "refresh_manifest", slow_manifest)
    span(1)
    time.sleep(0.1)
    t = time.monotonic()
    assert rd.snapshot() is snap1  # due, but read behind: the one it has, at once
    assert entered.wait(10)  # the read runs ...
    assert any(th.name == data.READ_THREAD for th in threading.enumerate())
    assert rd.snapshot() is snap1  # ... and one read at a time
    assert rd.derived("x", snap1, lambda _: 7) == 7  # nothing waits for it
    assert time.monotonic() - t < 5
    gate.set()
    deadline = time.monotonic() + 10
    while len(rd.snapshot().spans) != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(rd.snapshot().spans) == 2

    def broken() -> Any:
        raise RunFormatError("live/manifest.json: damaged")

    monkeypatch.setattr(rd.reader, "refresh_manifest", broken)
    span(2)  # the files change, so a failure is not the last one's again
    time.sleep(0.1)
    rd.snapshot()  # starts the read behind, which fails
    deadline = time.monotonic() + 10
    while rd._failed is None and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    with pytest.raises(RunFormatError, match="damaged"):
        rd.snapshot()

    def bug() -> Any:
        raise KeyError("a bug in the read")

    monkeypatch.setattr(rd.reader, "refresh_manifest", bug)
    span(3)
    time.sleep(0.1)
    got: Any = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:  # the read behind fails ...
        try:
            rd.snapshot()
        except KeyError as e:  # ... and the next caller is told, not left on old data
            got = e
        time.sleep(0.02)
    assert got is not None and "a bug in the read" in str(got)
    w.close()


def test_a_refresh_child_never_reads_the_run(tmp_path: Path) -> None:
    """In a child of compute_apart a snapshot is the one the server had, however due a read
    is: another thread of the server may have held the read's lock when it forked."""
    from profiler.manifest import Manifest
    from profiler.store import RunWriter

    root = tmp_path / "runs"
    w = RunWriter(root / "live", Manifest(source="probe"), rotate_s=60, flush_s=0)
    for rank in range(2):
        w.write_spans({"rank": [rank], "lane": ["compute"], "kind": ["action"], "name": ["a"],
                       "start_ns": [rank], "end_ns": [rank + 5]})
        w.flush()
        if rank == 0:
            svc = DataService(str(root), live_reload_s=0.0, prometheus=None)
            rd, snap = svc.snapshot("live")
    assert compute_apart(lambda r: len(r.snapshot().spans), rd, rd._lock) == 1  # noqa: SLF001
    assert len(rd.snapshot().spans) == 2  # the server itself reads what is new
    w.close()
