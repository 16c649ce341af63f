"""Build and update a fake ``/sys/class/infiniband`` tree for the InfiniBand collector.

Layout as the kernel has it: ``<root>/<hca>/ports/<n>/{rate,link_layer,state}`` and
``<root>/<hca>/ports/<n>/counters/{port_xmit_data,port_rcv_data,...}``, each file one line.
Counters are rewritten in place with one fixed-width write, so a collector that keeps the
file open and re-reads it from offset 0 sees every update, as it does on sysfs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["IbTree", "COUNTER_FILES"]

COUNTER_FILES = ("port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets",
                 "port_xmit_wait")


class IbTree:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def port_dir(self, hca: str, port: int | str) -> Path:
        return self.root / hca / "ports" / str(port)

    def add_port(self, hca: str, port: int | str = 1, *, rate: str | None = "400 Gb/sec (4X NDR)",
                 link_layer: str | None = "InfiniBand", state: str = "4: ACTIVE",
                 missing: tuple[str, ...] = (), start: int = 0) -> None:
        d = self.port_dir(hca, port)
        (d / "counters").mkdir(parents=True, exist_ok=True)
        if rate is not None:
            (d / "rate").write_text(rate + "\n")
        if link_layer is not None:
            (d / "link_layer").write_text(link_layer + "\n")
        (d / "state").write_text(state + "\n")
        for name in COUNTER_FILES:
            if name not in missing:
                self.set(hca, port, **{name: start})

    def set(self, hca: str, port: int | str, **values: int) -> None:
        """Write counters in place (one fixed-width ``pwrite`` at offset 0, never truncated):
        like sysfs, the same inode shows the new value, so readers holding the file open
        see it."""
        for name, value in values.items():
            path = self.port_dir(hca, port) / "counters" / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, f"{int(value):>20}\n".encode(), 0)
            finally:
                os.close(fd)

    def get(self, hca: str, port: int | str, name: str) -> int:
        return int((self.port_dir(hca, port) / "counters" / name).read_text())

    def add(self, hca: str, port: int | str, **increments: int) -> None:
        self.set(hca, port, **{n: self.get(hca, port, n) + v for n, v in increments.items()})

    def remove(self, hca: str, port: int | str, name: str) -> None:
        (self.port_dir(hca, port) / "counters" / name).unlink()

    def make_unreadable(self, hca: str, port: int | str, name: str) -> None:
        """Put a directory where the counter file was: reading it then fails for every user,
        root included (chmod 000 does not stop root). A reader holding the old file open sees
        the change when it reopens."""
        path = self.port_dir(hca, port) / "counters" / name
        if path.is_dir():
            return
        path.unlink(missing_ok=True)
        path.mkdir()

    def make_readable(self, hca: str, port: int | str, name: str, value: int = 0) -> None:
        path = self.port_dir(hca, port) / "counters" / name
        if path.is_dir():
            shutil.rmtree(path)
        self.set(hca, port, **{name: value})

    def remove_hca(self, hca: str) -> None:
        shutil.rmtree(self.root / hca)
