"""The counter vocabulary: every device kind and metric a run's counter rows may carry, with
its unit, in one table. Writers (the probes, the reference run, the synthetic generator) use
these names; readers (analyses, dashboard, exporters) classify devices with the one
:func:`device_kind` here. The probes add their Prometheus / DCGM columns on top of this table
(:mod:`probes.metrics`); nothing else declares a metric.

Devices (``device`` column of ``RUN/counters``):

============  ====================  ==========================================================
kind          device written        what
============  ====================  ==========================================================
``nvlink``    ``nvlink``            all NVLink links of a GPU
``nvlink:L``  ``nvlink:3``          one NVLink link (link 3) of a GPU
``ib``        ``ib:mlx5_0:1``       one InfiniBand / RoCE HCA port (node level, no GPU)
``sm``        ``sm``                the GPU's streaming multiprocessors
``gpu``       ``gpu``               the GPU as a whole
``pcie``      ``pcie``              the GPU's PCIe link
``train``     ``train``             per-step training facts (reference run)
``expert``    ``expert:2:17``       expert 17 of MoE layer 2 (``expert:17`` is layer 0)
``routing``   ``routing:2``         the router of MoE layer 2
============  ====================  ==========================================================

Units live in the metric name: ``_bytes_per_s`` B/s, ``_ratio`` 0..1, ``_hz`` Hz, ``_w`` W,
``_s`` seconds, ``_per_s`` per second. A rate is the delta of a cumulative counter over the
sample interval ending at ``ts_ns``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "NVLINK", "NVLINK_LINK", "IB", "SM", "GPU", "PCIE", "TRAIN", "EXPERT", "ROUTING",
    "LINK_KINDS", "TX_BYTES_PER_S", "RX_BYTES_PER_S", "PEAK_BYTES_PER_S", "RATE_SUFFIX",
    "CounterMetric", "COUNTERS", "device_kind", "device_kinds", "link_family", "nvlink_device",
    "link_index", "ib_device", "ib_port", "expert_device", "routing_device", "counter_metric",
    "is_rate", "unit_of",
]

# -- device kinds ---------------------------------------------------------------------------
NVLINK = "nvlink"
NVLINK_LINK = "nvlink:L"
IB = "ib"
SM = "sm"
GPU = "gpu"
PCIE = "pcie"
TRAIN = "train"
EXPERT = "expert"
ROUTING = "routing"
#: kinds that carry link bandwidth against a peak
LINK_KINDS = (NVLINK, NVLINK_LINK, IB)

# -- metric names used by code (the table below has them all) ------------------------------
TX_BYTES_PER_S = "tx_bytes_per_s"
RX_BYTES_PER_S = "rx_bytes_per_s"
PEAK_BYTES_PER_S = "peak_bytes_per_s"
RATE_SUFFIX = "_bytes_per_s"


def device_kind(device: str) -> str:
    """The kind of a ``device`` value: ``nvlink:3`` -> ``nvlink:L``; ``ib:mlx5_0:1`` ->
    ``ib``; ``expert:2:17`` -> ``expert``; ``routing:2`` -> ``routing``; a bare kind
    (``nvlink``, ``sm``, ``gpu``, ...) is its own kind. The one rule for every reader."""
    head, sep, _ = device.partition(":")
    if not sep:
        return device
    if head == NVLINK:
        return NVLINK_LINK
    return head


def device_kinds(devices: pd.Series | Iterable[str], *, family: bool = False) -> np.ndarray:
    """:func:`device_kind` of each value (object array), computed once per distinct value;
    with ``family`` its :func:`link_family` instead (both NVLink kinds -> ``nvlink``)."""
    import numpy as np
    import pandas as pd

    values = devices if isinstance(devices, pd.Series) else pd.Series(list(devices), dtype=object)
    codes, uniques = pd.factorize(values.astype("str"), use_na_sentinel=False)
    kinds = np.array([link_family(device_kind(u)) if family else device_kind(u)
                      for u in uniques], dtype=object)
    return kinds[codes] if len(codes) else np.array([], dtype=object)


def link_family(kind: str) -> str:
    """``nvlink`` for both NVLink kinds (a GPU's total and its single links), else the kind:
    what a link heatmap groups on one panel."""
    return NVLINK if kind in (NVLINK, NVLINK_LINK) else kind


def nvlink_device(link: int) -> str:
    return f"{NVLINK}:{link}"


def link_index(device: str) -> int | None:
    """The link of ``nvlink:L`` devices, else None."""
    head, sep, tail = device.partition(":")
    return int(tail) if head == NVLINK and sep and tail.isdigit() else None


def ib_device(hca: str, port: int | str) -> str:
    return f"{IB}:{hca}:{port}"


def ib_port(device: str) -> tuple[str, str] | None:
    """``ib:mlx5_0:1`` -> (``mlx5_0``, ``1``); None for any other device."""
    parts = device.split(":")
    return (parts[1], parts[-1]) if parts[0] == IB and len(parts) >= 3 else None


def expert_device(layer: int, expert: int) -> str:
    return f"{EXPERT}:{layer}:{expert}"


def routing_device(layer: int) -> str:
    return f"{ROUTING}:{layer}"


@dataclass(frozen=True)
class CounterMetric:
    """One metric a counter row may carry on a device kind."""

    device: str
    name: str
    unit: str
    help: str


COUNTERS: tuple[CounterMetric, ...] = (
    # NVLink, whole GPU
    CounterMetric(NVLINK, TX_BYTES_PER_S, "B/s", "NVLink data sent by the GPU, all links"),
    CounterMetric(NVLINK, RX_BYTES_PER_S, "B/s", "NVLink data received by the GPU, all links"),
    CounterMetric(NVLINK, "raw_tx_bytes_per_s", "B/s",
                  "NVLink data plus protocol overhead sent, all links"),
    CounterMetric(NVLINK, "raw_rx_bytes_per_s", "B/s",
                  "NVLink data plus protocol overhead received, all links"),
    CounterMetric(NVLINK, "gpm_tx_bytes_per_s", "B/s", "NVLink write bandwidth, all links, from GPM"),
    CounterMetric(NVLINK, "gpm_rx_bytes_per_s", "B/s", "NVLink read bandwidth, all links, from GPM"),
    CounterMetric(NVLINK, "link_count", "links", "active NVLink links of the GPU"),
    CounterMetric(NVLINK, PEAK_BYTES_PER_S, "B/s",
                  "one-direction peak of all active links (links x link speed)"),
    # NVLink, one link
    CounterMetric(NVLINK_LINK, TX_BYTES_PER_S, "B/s",
                  "NVLink data sent on one link (from GPM when the driver repeats the GPU total "
                  "per link)"),
    CounterMetric(NVLINK_LINK, RX_BYTES_PER_S, "B/s",
                  "NVLink data received on one link (from GPM when the driver repeats the GPU "
                  "total)"),
    CounterMetric(NVLINK_LINK, PEAK_BYTES_PER_S, "B/s", "one-direction speed of the link"),
    # SMs and the GPU
    CounterMetric(SM, "sm_util_ratio", "ratio",
                  "share of SMs busy (whole GPU: cannot split compute from communication)"),
    CounterMetric(SM, "sm_occupancy_ratio", "ratio", "resident warps / theoretical maximum"),
    CounterMetric(SM, "tensor_util_ratio", "ratio", "share of time SMs ran any tensor-core op"),
    CounterMetric(SM, "sm_clock_hz", "Hz", "SM clock"),
    CounterMetric(SM, "comm_sms", "SMs", "SMs held by communication kernels (mean over the interval)"),
    CounterMetric(SM, "compute_sms", "SMs", "SMs held by compute kernels (mean over the interval)"),
    CounterMetric(GPU, "dram_bw_util_ratio", "ratio", "DRAM bandwidth used / peak"),
    CounterMetric(GPU, "gpu_util_ratio", "ratio",
                  "share of time a kernel was running (not SM occupancy)"),
    CounterMetric(GPU, "power_w", "W", "board power draw"),
    CounterMetric(PCIE, "pcie_tx_bytes_per_s", "B/s", "PCIe bytes sent by the GPU"),
    CounterMetric(PCIE, "pcie_rx_bytes_per_s", "B/s", "PCIe bytes received by the GPU"),
    # InfiniBand / RoCE ports
    CounterMetric(IB, TX_BYTES_PER_S, "B/s", "bytes sent by the port"),
    CounterMetric(IB, RX_BYTES_PER_S, "B/s", "bytes received by the port"),
    CounterMetric(IB, "tx_packets_per_s", "packets/s", "packets sent by the port"),
    CounterMetric(IB, "rx_packets_per_s", "packets/s", "packets received by the port"),
    CounterMetric(IB, "xmit_wait_ticks_per_s", "ticks/s",
                  "ticks with data to send but no credits (congestion)"),
    CounterMetric(IB, PEAK_BYTES_PER_S, "B/s", "one-direction port rate"),
    # training (reference run, synthetic sample)
    CounterMetric(TRAIN, "loss", "nats",
                  "mean next-token cross-entropy of the step over all micro-batches and replicas"),
    CounterMetric(TRAIN, "step", "step", "the step number (same ts_ns as the step's other rows)"),
    CounterMetric(TRAIN, "step_time_s", "s", "this rank's wall time of the step"),
    CounterMetric(TRAIN, "step_cpu_s", "s", "CPU seconds this rank's process used in the step"),
    CounterMetric(EXPERT, "tokens", "tokens",
                  "tokens routed to the expert in the step (whole EP x DP group)"),
    CounterMetric(EXPERT, "bias", "logit", "the expert's selection bias after the step's update"),
    CounterMetric(ROUTING, "nodes_per_token_mean", "groups",
                  "expert groups a token's top-k spans, mean over the step"),
    CounterMetric(ROUTING, "max_load_ratio", "ratio", "largest expert load / mean load"),
)

_BY_KEY = {(m.device, m.name): m for m in COUNTERS}


def counter_metric(device: str, name: str) -> CounterMetric | None:
    """The table entry for a counter row (``device`` may be a device or a kind)."""
    return _BY_KEY.get((device_kind(device), name))


def is_rate(metric: str) -> bool:
    """A link rate in bytes per second (the rows link bandwidth is computed from)."""
    return metric.endswith(RATE_SUFFIX)


def unit_of(device: str, name: str) -> str | None:
    m = counter_metric(device, name)
    return None if m is None else m.unit
