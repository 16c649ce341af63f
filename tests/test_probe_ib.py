"""The InfiniBand collector against a sysfs tree the tests build and update."""

from __future__ import annotations

import logging
import math
import os

import pytest
from fakes.sysfs import IbTree

from probes.base import Rows, Unavailable
from probes.ib import SATURATED_32, IbCollector, parse_rate


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance(self, s: float) -> None:
        self.ns += round(s * 1e9)


def sample(c: IbCollector, ts: int = 0) -> dict[tuple[str, str], float]:
    rows = Rows()
    rows.ts_ns = ts
    c.sample(rows)
    assert all(g is None for g in rows.gpu)  # node-level devices
    return {(d, m): v for d, m, v in zip(rows.device, rows.metric, rows.value, strict=True)}


@pytest.fixture
def tree(tmp_path) -> IbTree:
    t = IbTree(tmp_path / "infiniband")
    t.add_port("mlx5_0", 1)
    t.add_port("mlx5_1", 1, rate="200 Gb/sec (4X HDR)")
    t.add_port("mlx5_1", 2, rate="100 Gb/sec (4X EDR)")
    return t


def test_files_stay_open_between_rescans(tree: IbTree, monkeypatch) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=10)
    c.start()
    opened = []
    real_open = os.open

    def spy(path, flags, *a):  # os is one module: the tree's writes come through here too
        if flags & os.O_ACCMODE == os.O_RDONLY:
            opened.append(path)
        return real_open(path, flags, *a)

    monkeypatch.setattr("probes.ib.os.open", spy)
    for _ in range(5):
        clock.advance(0.1)
        tree.add("mlx5_0", 1, port_xmit_data=100)
        assert sample(c)[("ib:mlx5_0:1", "tx_bytes_per_s")] == pytest.approx(4000)
    assert opened == []  # one pread per counter and sample, no open
    clock.advance(10)
    sample(c)
    assert len(opened) == 3 * 5 + 3 * 3  # the rescan: counters plus rate/link_layer/state
    c.close()


def test_rates_of_several_hcas_and_ports(tree: IbTree) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock)
    c.start()
    first = sample(c)
    assert first[("ib:mlx5_0:1", "peak_bytes_per_s")] == 50e9
    assert first[("ib:mlx5_1:1", "peak_bytes_per_s")] == 25e9
    assert first[("ib:mlx5_1:2", "peak_bytes_per_s")] == 12.5e9
    clock.advance(0.25)
    tree.add("mlx5_0", 1, port_xmit_data=1_000_000, port_rcv_data=250_000, port_xmit_packets=500,
             port_rcv_packets=125, port_xmit_wait=40)
    tree.add("mlx5_1", 2, port_rcv_data=3)
    got = sample(c)
    assert got[("ib:mlx5_0:1", "tx_bytes_per_s")] == 4 * 1_000_000 / 0.25
    assert got[("ib:mlx5_0:1", "rx_bytes_per_s")] == 4 * 250_000 / 0.25
    assert got[("ib:mlx5_0:1", "tx_packets_per_s")] == 2000
    assert got[("ib:mlx5_0:1", "rx_packets_per_s")] == 500
    assert got[("ib:mlx5_0:1", "xmit_wait_ticks_per_s")] == 160
    assert got[("ib:mlx5_1:2", "rx_bytes_per_s")] == 48
    assert got[("ib:mlx5_1:1", "tx_bytes_per_s")] == 0
    assert c.totals()[(None, "ib:mlx5_0:1", "tx_bytes")] == 4_000_000
    assert c.statuses()["ib"].available
    assert "3 port(s) on 2 HCA(s)" in c.statuses()["ib"].reason


def test_saturated_32bit_counter_is_never_traffic(tree: IbTree, caplog) -> None:
    clock = Clock()
    tree.set("mlx5_0", 1, port_xmit_data=SATURATED_32 - 100)
    c = IbCollector(tree.root, clock=clock)
    c.start()
    tree.set("mlx5_0", 1, port_xmit_data=SATURATED_32 - 50)
    clock.advance(0.1)
    assert sample(c)[("ib:mlx5_0:1", "tx_bytes_per_s")] == 4 * 50 / 0.1
    with caplog.at_level(logging.WARNING, logger="dualscope.probes"):
        for _ in range(5):  # reaches 2^32-1 and stays there: unknown traffic, not zero
            tree.set("mlx5_0", 1, port_xmit_data=SATURATED_32)
            clock.advance(0.1)
            assert math.isnan(sample(c)[("ib:mlx5_0:1", "tx_bytes_per_s")])
    assert c.totals()[(None, "ib:mlx5_0:1", "tx_bytes")] == 200
    assert sum("2^32-1" in r.message for r in caplog.records) == 1  # logged once
    assert "saturated" in c.statuses()["ib"].reason


def test_reset_is_never_traffic(tree: IbTree) -> None:
    clock = Clock()
    tree.set("mlx5_1", 1, port_rcv_data=10_000)
    c = IbCollector(tree.root, clock=clock)
    c.start()
    tree.set("mlx5_1", 1, port_rcv_data=3)  # someone ran perfquery -R
    clock.advance(0.1)
    assert math.isnan(sample(c)[("ib:mlx5_1:1", "rx_bytes_per_s")])
    tree.set("mlx5_1", 1, port_rcv_data=1003)
    clock.advance(0.1)
    assert sample(c)[("ib:mlx5_1:1", "rx_bytes_per_s")] == pytest.approx(40_000)
    assert c.totals()[(None, "ib:mlx5_1:1", "rx_bytes")] == 4000
    assert "went backwards" in c.statuses()["ib"].reason


def test_missing_counter_file_is_nan_and_noted_once(tmp_path, caplog) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1, missing=("port_xmit_wait",))
    clock = Clock()
    c = IbCollector(tree.root, clock=clock)
    with caplog.at_level(logging.WARNING, logger="dualscope.probes"):
        c.start()
        for _ in range(10):
            clock.advance(0.1)
            tree.add("mlx5_0", 1, port_xmit_data=25)
            got = sample(c)
            assert math.isnan(got[("ib:mlx5_0:1", "xmit_wait_ticks_per_s")])
            assert got[("ib:mlx5_0:1", "tx_bytes_per_s")] == pytest.approx(1000)
    assert sum("port_xmit_wait missing" in r.message for r in caplog.records) == 1
    assert "port_xmit_wait missing" in c.statuses()["ib"].reason


def test_unreadable_file_then_readable_again(tree: IbTree) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=0.05)  # files are reopened on rescans
    c.start()
    tree.make_unreadable("mlx5_0", 1, "port_rcv_data")
    clock.advance(0.1)
    got = sample(c)
    assert math.isnan(got[("ib:mlx5_0:1", "rx_bytes_per_s")])
    assert got[("ib:mlx5_0:1", "tx_bytes_per_s")] == 0
    assert "port_rcv_data unreadable" in c.statuses()["ib"].reason
    tree.make_readable("mlx5_0", 1, "port_rcv_data", 100)
    clock.advance(0.1)
    assert math.isnan(sample(c)[("ib:mlx5_0:1", "rx_bytes_per_s")])  # first read after the gap
    tree.set("mlx5_0", 1, port_rcv_data=200)
    clock.advance(0.1)
    assert sample(c)[("ib:mlx5_0:1", "rx_bytes_per_s")] == pytest.approx(4000)


def test_permission_denied(tree: IbTree, monkeypatch) -> None:
    denied = str(tree.port_dir("mlx5_1", 2) / "counters" / "port_xmit_data")
    real_open = os.open

    def fake_open(path, flags, *a, **kw):  # root ignores chmod 000, so deny here
        if str(path) == denied and flags & os.O_ACCMODE == os.O_RDONLY:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr("probes.ib.os.open", fake_open)
    clock = Clock()
    c = IbCollector(tree.root, clock=clock)
    c.start()
    clock.advance(0.1)
    tree.add("mlx5_1", 2, port_xmit_data=5)
    got = sample(c)
    assert math.isnan(got[("ib:mlx5_1:2", "tx_bytes_per_s")])
    assert got[("ib:mlx5_1:2", "rx_bytes_per_s")] == 0
    assert "port_xmit_data permission denied" in c.statuses()["ib"].reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_chmod_000_file(tree: IbTree) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=0.05)
    c.start()
    os.chmod(tree.port_dir("mlx5_0", 1) / "counters" / "port_xmit_wait", 0)
    clock.advance(0.1)
    assert math.isnan(sample(c)[("ib:mlx5_0:1", "xmit_wait_ticks_per_s")])
    assert "permission denied" in c.statuses()["ib"].reason


def test_roce_port_is_flagged(tmp_path) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    tree.add_port("mlx5_bond_0", 1, link_layer="Ethernet", rate="100 Gb/sec (2X HDR)")
    c = IbCollector(tree.root, clock=Clock())
    c.start()
    assert "RoCE" in c.statuses()["ib"].reason and "mlx5_bond_0:1" in c.statuses()["ib"].reason
    ports = {p["port"]: p for p in c.facts()["ib_ports"]}
    assert ports["mlx5_bond_0:1"]["roce"] and not ports["mlx5_0:1"]["roce"]
    assert c.labels()["ib:mlx5_bond_0:1"]["link_layer"] == "Ethernet"
    assert c.facts()["ib_peak_bytes_per_s"] == 50e9


def test_unparseable_or_missing_rate_gives_nan_peak(tmp_path) -> None:
    tree = IbTree(tmp_path / "ib")
    tree.add_port("a", 1, rate=None, link_layer=None)
    tree.add_port("b", 1, rate="fast")
    c = IbCollector(tree.root, clock=Clock())
    c.start()
    got = sample(c)
    assert math.isnan(got[("ib:a:1", "peak_bytes_per_s")])
    assert math.isnan(got[("ib:b:1", "peak_bytes_per_s")])
    assert "cannot parse rate 'fast'" in c.statuses()["ib"].reason


@pytest.mark.parametrize(("text", "bytes_per_s"), [
    ("400 Gb/sec (4X NDR)", 50e9), ("200 Gb/sec (4X HDR)", 25e9), ("100 Gb/sec (4X EDR)", 12.5e9),
    ("2.5 Gb/sec (1X SDR)", 312.5e6), ("56 Gb/sec (4X FDR)", 7e9), ("800 Gb/sec (4X XDR)", 100e9),
])
def test_parse_rate(text: str, bytes_per_s: float) -> None:
    assert parse_rate(text) == bytes_per_s


def test_no_tree_or_no_port_is_unavailable(tmp_path) -> None:
    with pytest.raises(Unavailable, match="does not exist"):
        IbCollector(tmp_path / "nope").start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(Unavailable, match="no InfiniBand port"):
        IbCollector(tmp_path / "empty").start()


def test_port_that_appears_and_hca_that_vanishes(tree: IbTree) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=1.0)
    c.start()
    tree.add_port("mlx5_2", 1)
    tree.remove_hca("mlx5_1")
    clock.advance(1.5)
    got = sample(c)
    assert ("ib:mlx5_2:1", "tx_bytes_per_s") in got  # found on the rescan
    assert math.isnan(got[("ib:mlx5_1:1", "tx_bytes_per_s")])  # gone: NaN, not an error
    assert got[("ib:mlx5_0:1", "tx_bytes_per_s")] == 0
    assert "port mlx5_2:1 appeared" in c.statuses()["ib"].reason


# -- issue 12, item 6: nothing under the sysfs root can stall or fool the sampling loop -------
def _in_thread(fn, timeout_s: float = 5.0) -> None:
    """Run ``fn`` on a thread and fail (instead of hanging the suite) if it blocks."""
    import threading

    err: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as e:  # re-raised below, on the test's thread
            err.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), f"blocked for more than {timeout_s} s"
    if err:
        raise err[0]


@pytest.mark.parametrize("name", ["port_rcv_data", "rate", "link_layer", "state"])
def test_fifo_in_the_tree_is_skipped_with_a_note_never_read(tree: IbTree, name: str) -> None:
    d = tree.port_dir("mlx5_0", 1)
    path = d / "counters" / name if name.startswith("port_") else d / name
    path.unlink()
    os.mkfifo(path)  # opening it for reading (without O_NONBLOCK) would block forever
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=0.05)  # every sample reopens
    got: dict = {}

    def run() -> None:
        c.start()
        for _ in range(3):
            clock.advance(0.1)
            tree.add("mlx5_0", 1, port_xmit_data=25)
            got.update(sample(c))

    _in_thread(run)
    assert got[("ib:mlx5_0:1", "tx_bytes_per_s")] == pytest.approx(1000)  # the rest carries on
    if name == "port_rcv_data":
        assert math.isnan(got[("ib:mlx5_0:1", "rx_bytes_per_s")])
        assert "port_rcv_data unreadable: a FIFO, not a regular file" in c.statuses()["ib"].reason
    elif name == "rate":
        assert math.isnan(got[("ib:mlx5_0:1", "peak_bytes_per_s")])
        assert "rate unreadable (a FIFO, not a regular file" in c.statuses()["ib"].reason
    c.close()


@pytest.mark.parametrize("bad", [2**64, 2**70, 10**30, -5])
def test_value_beyond_64_bits_is_nan_with_a_note_never_traffic(tree: IbTree, bad: int,
                                                               caplog) -> None:
    clock = Clock()
    tree.set("mlx5_0", 1, port_xmit_packets=1000)
    c = IbCollector(tree.root, clock=clock)
    c.start()
    with caplog.at_level(logging.WARNING, logger="dualscope.probes"):
        for _ in range(3):
            tree.set("mlx5_0", 1, port_xmit_packets=bad)
            clock.advance(0.1)
            assert math.isnan(sample(c)[("ib:mlx5_0:1", "tx_packets_per_s")])
    assert sum("not an unsigned 64-bit counter" in r.message for r in caplog.records) == 1
    assert f"read {bad}" in c.statuses()["ib"].reason
    assert c.totals()[(None, "ib:mlx5_0:1", "tx_packets")] == 0
    # sane again (rewritten whole: the tree's in-place writes keep a longer value's tail)
    (tree.port_dir("mlx5_0", 1) / "counters" / "port_xmit_packets").write_text(f"{1100:>20}\n")
    clock.advance(0.1)
    assert sample(c)[("ib:mlx5_0:1", "tx_packets_per_s")] == pytest.approx(100 / 0.4)
    assert c.totals()[(None, "ib:mlx5_0:1", "tx_packets")] == 100


@pytest.mark.parametrize("failure", ["oserror", "garbage"])
def test_transient_read_error_costs_one_sample_not_a_rescan(tree: IbTree, monkeypatch,
                                                            failure: str) -> None:
    clock = Clock()
    c = IbCollector(tree.root, clock=clock, rescan_s=10)
    c.start()
    fd = c._ports[0].fds[0]  # mlx5_0:1 port_xmit_data
    real_pread = os.pread
    fail = {"left": 1}

    def flaky(f, n, off):
        if f == fd and fail["left"]:
            fail["left"] -= 1
            if failure == "oserror":
                raise OSError(5, "Input/output error")
            return b"\x00garbage\n"
        return real_pread(f, n, off)

    monkeypatch.setattr("probes.ib.os.pread", flaky)
    opened = []
    real_open = os.open

    def spy(path, flags, *a):  # os is one module: the tree's writes come through here too
        if flags & os.O_ACCMODE == os.O_RDONLY:
            opened.append(path)
        return real_open(path, flags, *a)

    monkeypatch.setattr("probes.ib.os.open", spy)
    rates = []
    for _ in range(3):
        clock.advance(0.1)
        tree.add("mlx5_0", 1, port_xmit_data=100)
        rates.append(sample(c)[("ib:mlx5_0:1", "tx_bytes_per_s")])
    assert math.isnan(rates[0])  # the failed sample
    assert rates[1] == pytest.approx(4 * 200 / 0.2)  # the next one spans the gap
    assert rates[2] == pytest.approx(4000)
    assert opened == []  # the file stayed open; no waiting for the 10 s rescan
    assert c.totals()[(None, "ib:mlx5_0:1", "tx_bytes")] == 4 * 300
    assert "port_xmit_data unreadable" in c.statuses()["ib"].reason
    c.close()
