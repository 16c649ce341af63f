"""InfiniBand / RoCE collector: every HCA port under a sysfs root
(default ``/sys/class/infiniband``).

Per port and sample it reads five cumulative counters from ``<hca>/ports/<p>/counters/``:
``port_xmit_data`` and ``port_rcv_data`` (octets / 4, so x 4 gives bytes),
``port_xmit_packets``, ``port_rcv_packets`` and ``port_xmit_wait`` (ticks with data queued but
no credits: congestion). Rates are deltas over the time between this port's reads.

Never counted as traffic: a counter that went backwards (someone reset it), a legacy 32-bit
counter stuck at 2^32 - 1 (they saturate instead of wrapping) and a value that is not an
unsigned 64-bit number; each gives NaN and one log line. ``rate`` ("400 Gb/sec (4X NDR)")
gives the port's one-direction peak in bytes/s; ``link_layer`` Ethernet marks a RoCE port (its
counters count RDMA traffic only).

A missing file gives NaN for that counter and one note; the other counters and ports carry
on. Counter files stay open between rescans (every ``rescan_s``, 10 s) and are read with one
``pread`` each; a rescan finds new ports, re-reads rates and reopens every file, so a file
that comes back or is replaced is picked up then. A read that fails (or returns garbage) on
an open file costs that one sample: the file is read again at the next, and the next good
value's rate spans the gap. A path that is not a regular file (a FIFO, a device, a
directory) is opened without blocking, checked and closed, never read: it is skipped with a
note until a rescan finds a regular file there, so it cannot stall the sampling loop. Nothing
is ever written.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from profiler.counters import ib_device
from profiler.fsutil import NotRegularFile, open_regular

from .base import NAN, CollectorBase, Rows, Unavailable

__all__ = ["IbCollector", "parse_rate", "DEFAULT_ROOT", "SATURATED_32", "MAX_64"]

DEFAULT_ROOT = "/sys/class/infiniband"
SATURATED_32 = 2**32 - 1
MAX_64 = 2**64 - 1
#: (counter file, rate metric, cumulative name, bytes or units per count)
COUNTERS = (
    ("port_xmit_data", "tx_bytes_per_s", "tx_bytes", 4),
    ("port_rcv_data", "rx_bytes_per_s", "rx_bytes", 4),
    ("port_xmit_packets", "tx_packets_per_s", "tx_packets", 1),
    ("port_rcv_packets", "rx_packets_per_s", "rx_packets", 1),
    ("port_xmit_wait", "xmit_wait_ticks_per_s", "xmit_wait_ticks", 1),
)
_RATE_NAMES = [c[1] for c in COUNTERS]
_SCALE = [c[3] for c in COUNTERS]
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*Gb/sec")


def parse_rate(text: str) -> float:
    """``"400 Gb/sec (4X NDR)"`` -> 5e10 bytes/s (one direction); NaN when unparseable."""
    m = _RATE_RE.search(text)
    return float(m.group(1)) * 1e9 / 8 if m else NAN


def _read_text(path: str) -> str:
    fd = open_regular(path)
    try:
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


class _Port:
    def __init__(self, hca: str, port: str, path: Path) -> None:
        self.hca, self.port = hca, port
        self.device = ib_device(hca, port)
        self.name = f"{hca}:{port}"
        self.path = path
        self.files = [str(path / "counters" / c[0]) for c in COUNTERS]
        self.fds: list[int | None] = [None] * len(COUNTERS)
        self.devices = [self.device] * len(COUNTERS)
        self.prev: list[int | None] = [None] * len(COUNTERS)
        self.prev_t = [0] * len(COUNTERS)
        #: what each counter counted over valid intervals (bytes, packets, ticks)
        self.totals = [0.0] * len(COUNTERS)
        self.rate_text = ""
        self.peak = NAN
        self.link_layer = "unknown"
        self.state = "unknown"

    @property
    def roce(self) -> bool:
        return self.link_layer.lower() == "ethernet"

    def info(self) -> dict[str, Any]:
        return {"port": self.name, "link_layer": self.link_layer, "roce": self.roce,
                "rate": self.rate_text, "peak_bytes_per_s": None if self.peak != self.peak
                else self.peak, "state": self.state}


class IbCollector(CollectorBase):
    """Samples every port of every HCA under ``root``. ``clock`` returns monotonic ns."""

    name = "ib"

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *,
                 clock: Callable[[], int] = time.monotonic_ns, rescan_s: float = 10.0,
                 static_every_s: float = 60.0) -> None:
        super().__init__()
        self.root = Path(root)
        self._clock = clock
        self._rescan_ns = int(rescan_s * 1e9)
        self._static_ns = int(static_every_s * 1e9)
        self._ports: list[_Port] = []
        self._known: set[str] = set()
        self._rescan_due = 0
        self._static_due = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self.root.is_dir():
            raise Unavailable(f"no InfiniBand: {self.root} does not exist (no HCA, or the "
                              "ib_core / mlx5_ib driver is not loaded); pass --ib-sysfs to "
                              "read another tree")
        self._discover()
        if not self._ports:
            raise Unavailable(f"no InfiniBand port under {self.root} (no <hca>/ports/<n>)")
        self._rescan_due = self._clock() + self._rescan_ns
        for p in self._ports:  # prime: the first sample then has an interval
            self._read_port(p, None)

    def close(self) -> None:
        for p in self._ports:
            self._close_fds(p)

    def _open_fds(self, p: _Port) -> None:
        """(Re)open the port's counter files. Held open between rescans and read with
        ``pread(fd, 64, 0)``: sysfs regenerates an attribute on every read from offset 0, and
        one pread costs ~2 µs against ~14 µs for open + read + close."""
        was_open = [fd is not None for fd in p.fds]
        self._close_fds(p)
        for i, path in enumerate(p.files):
            try:
                p.fds[i] = open_regular(path)
            except OSError as e:
                self._unreadable(p, i, e)
                continue
            if not was_open[i]:  # back after a gap, maybe a new counter: a fresh baseline
                p.prev[i] = None

    @staticmethod
    def _close_fds(p: _Port) -> None:
        for i, fd in enumerate(p.fds):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                p.fds[i] = None

    def _discover(self) -> None:
        try:
            hcas = sorted(os.listdir(self.root))
        except OSError as e:
            self._board.note("ib", "listdir", f"cannot list {self.root}: {e}")
            return
        for hca in hcas:
            ports_dir = self.root / hca / "ports"
            try:
                ports = sorted(os.listdir(ports_dir), key=lambda s: (len(s), s))
            except OSError as e:
                self._board.note("ib", f"ports:{hca}", f"{hca}: cannot list ports ({e})")
                continue
            for port in ports:
                name = f"{hca}:{port}"
                if name in self._known:
                    continue
                self._known.add(name)
                p = _Port(hca, port, ports_dir / port)
                self._read_attributes(p)
                self._open_fds(p)
                self._ports.append(p)
                if self._rescan_due:
                    self._board.note("ib", f"new:{name}", f"port {name} appeared", level=20)
        n_hca = len({p.hca for p in self._ports})
        roce = [p.name for p in self._ports if p.roce]
        summary = f"{len(self._ports)} port(s) on {n_hca} HCA(s)"
        if roce:
            summary += f"; RoCE (Ethernet, counters count RDMA traffic only): {', '.join(roce)}"
        self._board.set("ib", bool(self._ports), summary)

    def _read_attributes(self, p: _Port) -> None:
        try:
            p.rate_text = _read_text(str(p.path / "rate"))
            p.peak = parse_rate(p.rate_text)
            if p.peak != p.peak:
                self._board.note("ib", f"rate:{p.name}",
                                 f"port {p.name}: cannot parse rate {p.rate_text!r}; peak NaN")
        except OSError as e:
            self._board.note("ib", f"rate:{p.name}", f"port {p.name}: rate unreadable ({e}); "
                             "peak NaN")
        for attr in ("link_layer", "state"):
            # old kernels have no link_layer (InfiniBand); state is informational
            with contextlib.suppress(OSError):
                setattr(p, attr, _read_text(str(p.path / attr)))

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, rows: Rows) -> None:
        now = self._clock()
        if now >= self._rescan_due:  # new ports, changed rates, files replaced or back
            self._rescan_due = now + self._rescan_ns
            known = list(self._ports)  # ports found now are read and opened by _discover
            self._discover()
            for p in known:
                self._read_attributes(p)
                self._open_fds(p)
        if now >= self._static_due:
            self._static_due = now + self._static_ns
            for p in self._ports:
                rows.add(None, p.device, "peak_bytes_per_s", p.peak)
        for p in self._ports:
            self._read_port(p, rows)

    def _read_port(self, p: _Port, rows: Rows | None) -> None:
        fds, prev, prev_t, totals = p.fds, p.prev, p.prev_t, p.totals
        values: list[int | None] = [None] * len(fds)
        for i, fd in enumerate(fds):
            if fd is not None:  # None: missing or not a regular file, retried at the rescan
                try:
                    read = int(os.pread(fd, 64, 0))
                except (OSError, ValueError) as e:  # this sample only: read again next time
                    self._unreadable(p, i, e)
                    continue
                if 0 <= read <= MAX_64:
                    values[i] = read
                else:
                    self._board.note("ib", f"range:{p.name}:{i}",
                                     f"port {p.name}: {COUNTERS[i][0]} read {read}, which is "
                                     "not an unsigned 64-bit counter; NaN, never traffic")
        t = self._clock()
        rates = [NAN] * len(fds)
        for i, value in enumerate(values):
            if value is None:  # keep the last good value: the next rate spans the gap
                continue
            before, before_t = prev[i], prev_t[i]
            prev[i], prev_t[i] = value, t
            if before is None or t <= before_t:
                continue
            if value >= before and value != SATURATED_32 and before != SATURATED_32:
                counted = (value - before) * _SCALE[i]
                rates[i] = counted * 1e9 / (t - before_t)
                totals[i] += counted
            elif value == SATURATED_32 or before == SATURATED_32:
                self._board.note("ib", f"sat:{p.name}:{i}",
                                 f"port {p.name}: {COUNTERS[i][0]} is stuck at 2^32-1 "
                                 "(a saturated 32-bit counter); NaN, never traffic")
            else:
                self._board.note("ib", f"reset:{p.name}:{i}",
                                 f"port {p.name}: {COUNTERS[i][0]} went backwards "
                                 "(reset); that interval is NaN, never traffic")
        if rows is not None:
            rows.extend(None, p.devices, _RATE_NAMES, rates)

    def _unreadable(self, p: _Port, i: int, e: Exception) -> None:
        what = COUNTERS[i][0]
        if isinstance(e, FileNotFoundError):
            why = "missing"
        elif isinstance(e, PermissionError):
            why = "permission denied"
        elif isinstance(e, NotRegularFile):
            why = f"unreadable: {e}; skipped"
        else:
            why = f"unreadable ({type(e).__name__}: {e})"
        self._board.note("ib", f"file:{p.name}:{i}:{type(e).__name__}",
                         f"port {p.name}: counters/{what} {why}; NaN")

    # -- reporting ---------------------------------------------------------------------------
    def totals(self) -> dict[tuple[int | None, str, str], float]:
        return {(None, p.device, c[2]): p.totals[i] for p in self._ports
                for i, c in enumerate(COUNTERS)}

    def labels(self) -> dict[int | str, dict[str, str]]:
        return {p.device: {"hca": p.hca, "port": p.port, "link_layer": p.link_layer}
                for p in self._ports}

    def facts(self) -> dict[str, Any]:
        peaks = [p.peak for p in self._ports if p.peak == p.peak]
        return {"ib_peak_bytes_per_s": max(peaks) if peaks else None,
                "ib_ports": [p.info() for p in self._ports]}

    def describe(self) -> list[str]:
        return [f"{p.name}: {p.link_layer}{' (RoCE)' if p.roce else ''}, rate {p.rate_text or '?'}"
                f", state {p.state}" for p in self._ports]
