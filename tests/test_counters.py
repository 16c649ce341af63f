"""The one counter vocabulary (profiler.counters): device kinds, and every counter row that
the writers produce is declared in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.counters import (
    COUNTERS,
    counter_metric,
    device_kind,
    device_kinds,
    ib_device,
    ib_port,
    link_family,
    link_index,
    nvlink_device,
    unit_of,
)
from profiler.store import RunReader

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("device", "kind"), [
    ("nvlink", "nvlink"), ("nvlink:3", "nvlink:L"), ("ib:mlx5_0:1", "ib"), ("sm", "sm"),
    ("gpu", "gpu"), ("pcie", "pcie"), ("train", "train"), ("expert:2:17", "expert"),
    ("expert:5", "expert"), ("routing:0", "routing"),
])
def test_device_kind(device: str, kind: str) -> None:
    assert device_kind(device) == kind
    assert list(device_kinds(pd.Series([device, device]))) == [kind, kind]
    assert link_family(kind) == ("nvlink" if kind.startswith("nvlink") else kind)


def test_vectorised_equals_scalar() -> None:
    devs = ["nvlink", "nvlink:0", "ib:mlx5_3:1", "sm", "nvlink:11", "expert:1:2"] * 3
    assert list(device_kinds(devs)) == [device_kind(d) for d in devs]
    assert list(device_kinds(devs, family=True)) == [link_family(device_kind(d)) for d in devs]
    assert len(device_kinds(pd.Series([], dtype=object))) == 0


def test_constructors_round_trip() -> None:
    assert link_index(nvlink_device(7)) == 7 and link_index("nvlink") is None
    assert ib_port(ib_device("mlx5_2", 1)) == ("mlx5_2", "1") and ib_port("nvlink:1") is None


def test_table_is_unique_with_units() -> None:
    keys = [(m.device, m.name) for m in COUNTERS]
    assert len(keys) == len(set(keys))
    assert unit_of("nvlink:5", "tx_bytes_per_s") == "B/s"
    assert counter_metric("ib:mlx5_0:1", "nope") is None
    for m in COUNTERS:
        if m.name.endswith("_bytes_per_s"):
            assert m.unit == "B/s", m


def test_probe_gauges_come_from_the_vocabulary() -> None:
    from probes.metrics import METRICS

    for m in METRICS:
        if m.kind == "gauge":
            assert counter_metric(m.device, m.name) is m.counter, m


@pytest.mark.parametrize("run", sorted(p.name for p in (ROOT / "sample_traces").iterdir()
                                       if (p / "manifest.json").is_file()))
def test_every_sample_counter_is_declared(run: str) -> None:
    counters = RunReader(ROOT / "sample_traces" / run).counters()
    if not len(counters):
        pytest.fail(f"sample {run} has no counters; the check would be empty")
    pairs = counters[["device", "metric"]].drop_duplicates()
    undeclared = [(d, m) for d, m in zip(pairs["device"], pairs["metric"], strict=True)
                  if counter_metric(str(d), str(m)) is None]
    assert not undeclared, undeclared
    assert np.all(device_kinds(pairs["device"]) != None)  # noqa: E711
