"""The probe under faults (issue 12, items 5 and 6): options that make no sense are refused
on one line; a FIFO in the sysfs tree or a collector that hangs never holds up SIGTERM /
SIGHUP (the run is sealed within 2 s); a disk that fills while the agent runs stops the
writing, not the agent, and ends in exit 2 with one line; nothing is left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes.nvml import FakeNvml
from fakes.sysfs import IbTree
from helpers.faults import Case, ForkServer, cli_env, listing, problems

from probes.agent import Agent, AgentConfig, start_collectors
from probes.base import CollectorBase, Rows
from probes.commands import build_collectors
from profiler.errors import InputError
from profiler.store import RunReader

ROOT = Path(__file__).resolve().parent.parent


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--interval", "inf"], "--interval inf: must be a number of seconds from 0.001 to 3600"),
    (["--interval", "nan"], "--interval nan"),
    (["--interval", "0"], "--interval 0.0"),
    (["--interval", "-1"], "--interval -1.0"),
    (["--interval", "1e9"], "--interval 1000000000.0"),
    (["--duration", "inf"], "--duration inf: must be a finite, positive number"),
    (["--duration", "0"], "--duration 0.0"),
    (["--sms-per-gpu", "-3"], "'--sms-per-gpu': -3 is not in the range x>=1"),
    (["--sms-per-gpu", "0"], "'--sms-per-gpu': 0 is not in the range x>=1"),
    (["--metrics-port", "70000"], "--metrics-port 70000"),
    (["--interval", "fast"], "'fast' is not a valid float"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_nonsense_options_are_refused_on_one_line(tmp_path: Path, args: list[str],
                                                  needle: str, fork_server: ForkServer) -> None:
    out = tmp_path / "run"
    o = fork_server.run(Case(" ".join(args), ("probe", "--out", str(out), "--metrics-port",
                                              "-1", *args) if "--metrics-port" not in args
                             else ("probe", "--out", str(out), *args),
                             watch=(str(tmp_path),), ok_rc=frozenset({2}), timeout_s=30))
    assert not problems(o), (problems(o), o.stderr)
    lines = o.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dualscope: error: "), o.stderr
    assert needle in lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def fork_server():
    with ForkServer() as server:
        yield server


def test_config_refuses_what_the_cli_refuses(tmp_path: Path) -> None:
    for bad in (float("inf"), float("nan"), 0.0, -0.1, 1e-4, 3601.0):
        with pytest.raises(InputError, match="--interval"):
            AgentConfig(tmp_path / "x", interval_s=bad)
    for bad in (float("inf"), float("nan"), 0.0, -5.0):
        with pytest.raises(InputError, match="--duration"):
            AgentConfig(tmp_path / "x", duration_s=bad)
    AgentConfig(tmp_path / "x", interval_s=0.001)
    AgentConfig(tmp_path / "x", interval_s=3600.0, duration_s=1e9)


# -- stopping never waits on a collector ------------------------------------------------------------
def _probe(run: Path, tree: IbTree, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dualscope", "probe", "--out", str(run), "--interval", "0.02",
         "--metrics-port", "-1", "--ib-sysfs", str(tree.root), *extra],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rows(run: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if len(RunReader(run).counters()) > 0:
                return
        except Exception:  # not there yet
            pass
        time.sleep(0.05)
    raise AssertionError("the probe wrote no rows")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_seals_the_run_within_2_s_with_a_fifo_in_the_sysfs_tree(
        tmp_path: Path, sig: signal.Signals) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    tree.add_port("mlx5_1", 1)
    counters = tree.port_dir("mlx5_1", 1) / "counters"
    (counters / "port_xmit_data").unlink()
    os.mkfifo(counters / "port_xmit_data")  # a plain open() of it blocks until a writer
    (tree.port_dir("mlx5_1", 1) / "rate").unlink()
    os.mkfifo(tree.port_dir("mlx5_1", 1) / "rate")
    run = tmp_path / "run"
    proc = _probe(run, tree)
    try:
        _wait_rows(run, proc)
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert took < 2.0, f"{sig.name} took {took:.2f} s"
    assert "Traceback" not in err
    reader = RunReader(run)
    m = reader.manifest
    assert m.status == "finished"
    ib = next(v for k, v in m.probes.items() if k.startswith("ib@"))
    assert "port_xmit_data unreadable: a FIFO, not a regular file" in ib.reason
    assert "rate unreadable (a FIFO" in ib.reason
    assert not [p for p in (run / "counters").rglob("*") if p.name.endswith(".open")]
    c = reader.counters()
    assert len(c[(c.device == "ib:mlx5_0:1")]) > 0
    assert not [p for p in listing([tmp_path]) if p.endswith(".tmp")]


class _Hangs(CollectorBase):
    """A collector whose third sample never returns (a wedged driver call)."""

    name = "hangs"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.n = 0
        self.closed = False

    def start(self) -> None:
        self._board.set("hangs", True)

    def sample(self, rows: Rows) -> None:
        self.n += 1
        rows.add(None, "test:0", "calls", float(self.n))
        if self.n == 3:
            self.release.wait()

    def close(self) -> None:
        self.closed = True

    def describe(self) -> list[str]:
        return []


def test_a_hung_collector_does_not_hold_up_stopping(tmp_path: Path) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    hangs = _Hangs()
    collectors = start_collectors([*build_collectors(ib_sysfs=str(tree.root),
                                                     nvml=FakeNvml(library_found=False)),
                                   hangs])
    agent = Agent(AgentConfig(tmp_path / "run", interval_s=0.01, flush_s=0.01,
                              stop_grace_s=0.5, hostname="n"), collectors)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    try:
        s = agent.run(stop)
        took = time.monotonic() - t0 - 0.5
    finally:
        hangs.release.set()  # let the abandoned sampler thread finish
    assert took < 1.5, took
    assert s["stuck_in"] == "hangs" and not hangs.closed  # the stuck one is left alone
    m = RunReader(tmp_path / "run").manifest
    assert m.status == "finished"
    assert "stuck in a sample" in m.probes["hangs@n"].reason
    assert m.extra["probe"]["n"]["stuck_in"] == "hangs"
    c = RunReader(tmp_path / "run").counters()
    assert set(c[c.metric == "calls"].value) <= {1.0, 2.0}  # rows of finished samples only
    assert not list((tmp_path / "run").rglob("*.open"))


def test_a_fifo_as_the_kernel_runs_manifest_does_not_hang_the_probe(tmp_path: Path) -> None:
    """--kernels-from a run whose manifest.json is a FIFO: the SM split is unavailable (it
    used to block in start() forever, and SIGTERM with it); the probe runs and stops."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    os.mkfifo(kernels / "manifest.json")
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    run = tmp_path / "run"
    proc = _probe(run, tree, "--kernels-from", str(kernels))
    try:
        _wait_rows(run, proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert took < 2.0, took
    m = RunReader(run).manifest
    assert m.status == "finished"
    sm = next(v for k, v in m.probes.items() if k.startswith("smsplit@"))
    assert not sm.available and "a FIFO, not a regular file" in sm.reason


def test_a_collector_hanging_in_start_does_not_hold_up_stopping() -> None:
    """A start() that never returns (a wedged driver in nvmlInit): a stop signal during
    startup ends the wait at once; the helper thread is a daemon and is left behind."""
    from probes.commands import _start_unless_stopped

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    hang = threading.Event()
    t0 = time.monotonic()
    try:
        got = _start_unless_stopped(stop, lambda: [hang.wait()])  # type: ignore[list-item]
    finally:
        hang.set()
    assert got is None and time.monotonic() - t0 < 1.0
    with pytest.raises(ZeroDivisionError):  # a start that fails says why, on this thread
        _start_unless_stopped(threading.Event(), lambda: [1 / 0])  # type: ignore[list-item]


# -- a disk that fills while the agent runs ----------------------------------------------------------
def test_store_error_stops_writing_not_sampling(tmp_path: Path, monkeypatch) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    agent = Agent(AgentConfig(tmp_path / "run", interval_s=0.01, flush_s=0.02,
                              duration_s=0.3, hostname="n"),
                  start_collectors(build_collectors(ib_sysfs=str(tree.root),
                                                    nvml=FakeNvml(library_found=False))))
    real_write = agent._stream.write
    calls = {"n": 0}

    def filling(table) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(table)

    monkeypatch.setattr(agent._stream, "write", filling)
    s = agent.run()
    assert s["samples"] > 10  # it kept sampling (and serving /metrics) after the failure
    assert "no space left on device" in s["store_error"]
    assert str(tmp_path / "run") in s["store_error"]
    assert calls["n"] == 3  # no more writes after the first failure
    m = RunReader(tmp_path / "run").manifest
    assert m.status == "failed" and "no space left" in m.extra["probe"]["n"]["store_error"]


def test_disk_full_mid_run_exit_2_with_one_line(tmp_path: Path) -> None:
    where = tmp_path / "mnt"
    where.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                           capture_output=True, text=True)
        why = r.stderr.strip() or f"exit {r.returncode}"
    except OSError as e:  # no mount(8) at all
        r, why = None, str(e)
    if r is None or r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({why}); the in-process store error test "
                    "covers the agent's side")
    try:
        tree = IbTree(tmp_path / "ib")
        for hca in range(8):
            tree.add_port(f"mlx5_{hca}", 1)
        run = where / "run"
        proc = _probe(run, tree, "--duration", "4")
        _wait_rows(run, proc)
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"dualscope: error: {run}: cannot write (no space left on "
                               "device)"), last
        assert not [p for p in listing([where]) if p.endswith(".tmp")]
        assert json.loads((run / "manifest.json").read_text())["status"] in ("live", "failed")
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
