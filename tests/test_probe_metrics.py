"""The one metric table: names, units, Prometheus conventions, and that every row the
collectors write is declared in it (and in docs/probes.md)."""

from __future__ import annotations

import re
from pathlib import Path

from fakes.nvml import FakeGpu, FakeNvml
from fakes.sysfs import IbTree

from probes.base import Rows
from probes.ib import IbCollector
from probes.metrics import METRICS, PROM_PREFIX, device_kind, lookup, markdown_table
from probes.nvml import NvmlCollector

ROOT = Path(__file__).resolve().parent.parent
ROW_UNITS = ("_per_s", "_ratio", "_hz", "_w", "_count", "_sms")
PROM_UNITS = ("_per_second", "_ratio", "_hertz", "_watts", "_links", "_sms")


def test_prometheus_names_follow_the_conventions() -> None:
    proms = [m.prom for m in METRICS]
    assert len(set(proms)) == len(proms)
    for m in METRICS:
        assert re.fullmatch(r"[a-z_]+", m.prom) and m.prom.startswith(PROM_PREFIX), m
        if m.kind == "counter":
            assert m.prom.endswith("_total") and m.unit in ("bytes", "packets", "ticks"), m
        else:
            assert m.kind == "gauge" and not m.prom.endswith("_total"), m
            assert m.prom.endswith(PROM_UNITS), m
            assert m.name.endswith(ROW_UNITS), m


def test_every_row_and_counter_the_collectors_write_is_declared(tmp_path) -> None:
    nv = FakeNvml([FakeGpu(links=2, tx_rate=[1e6, 0]), FakeGpu(links=2, repeat_total=True,
                                                                tx_rate=[1e6, 1e6])])
    tree = IbTree(tmp_path / "ib")
    tree.add_port("mlx5_0", 1)
    nvml, ib = NvmlCollector(nv, clock=nv.monotonic), IbCollector(tree.root)
    rows = Rows()
    for c in (nvml, ib):
        c.start()
    for _ in range(3):
        nv.advance(0.1)
        tree.add("mlx5_0", 1, port_xmit_data=10)
        nvml.sample(rows)
        ib.sample(rows)
    written = set(zip(rows.device, rows.metric, strict=True))
    for device, metric in written:
        spec = lookup(device, metric)
        assert spec is not None and spec.kind == "gauge", (device, metric)
    for _, device, name in [*nvml.totals(), *ib.totals()]:
        spec = lookup(device, name)
        assert spec is not None and spec.kind == "counter", (device, name)
    declared = {(m.device, m.name) for m in METRICS if m.kind == "gauge"}
    seen = {(device_kind(d), m) for d, m in written}
    # all but the SM split (kernel spans) appear from NVML + IB alone
    assert declared - seen == {("sm", "comm_sms"), ("sm", "compute_sms")}


def test_collectors_follow_the_protocol(tmp_path) -> None:
    from probes.base import Collector, NullCollector
    from probes.smsplit import SmSplitCollector

    for c in (NvmlCollector(FakeNvml()), IbCollector(tmp_path), SmSplitCollector(None),
              NullCollector("x", "why")):
        assert isinstance(c, Collector), c


def test_docs_hold_the_table() -> None:
    assert markdown_table() in (ROOT / "docs" / "probes.md").read_text()
