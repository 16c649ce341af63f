"""The probes' metric table: every counter row the probes write, taken from the one counter
vocabulary (:mod:`profiler.counters`: device kind, name with its unit, help), plus what only
the probes add: the Prometheus family it is served as, where the value comes from, and the
nvidia-smi / DCGM / sysfs equivalent a user already knows. The cumulative ``_total``
families (Prometheus only, never written to the run) are declared here.

Counter rows (``RUN/counters/<node>/``) are gauges over the sample interval that ends at
``ts_ns``: a rate is bytes moved in that interval divided by its length. Prometheus also gets
the cumulative byte / packet counts as ``_total`` counters (only intervals that were valid
are added, so a counter reset or 32-bit saturation never shows up as traffic).
``docs/probes.md`` holds :func:`markdown_table` verbatim; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.counters import (
    GPU,
    IB,
    NVLINK,
    NVLINK_LINK,
    PCIE,
    PEAK_BYTES_PER_S,
    RX_BYTES_PER_S,
    SM,
    TX_BYTES_PER_S,
    CounterMetric,
    counter_metric,
    device_kind,
)

__all__ = ["Metric", "METRICS", "device_kind", "lookup", "markdown_table", "PROM_PREFIX"]

PROM_PREFIX = "dualscope_"


@dataclass(frozen=True)
class Metric:
    """A row of the probes' table. ``counter`` is the vocabulary entry (device kind, name,
    unit, help): for a ``gauge`` the run's counter row, for a ``counter`` the cumulative value
    served to Prometheus only (its ``prom`` name ends in ``_total``)."""

    counter: CounterMetric
    #: ``gauge``: written to the run each sample and served as a gauge;
    #: ``counter``: cumulative, served as ``<prom>`` (which ends in ``_total``)
    kind: str
    prom: str
    source: str
    equivalent: str = "-"

    @property
    def device(self) -> str:
        return self.counter.device

    @property
    def name(self) -> str:
        return self.counter.name

    @property
    def unit(self) -> str:
        return self.counter.unit

    @property
    def help(self) -> str:
        return self.counter.help


def _gauge(device: str, name: str, prom: str, source: str, equivalent: str = "-") -> Metric:
    counter = counter_metric(device, name)
    if counter is None:  # an invariant of the two tables, checked at import
        raise AssertionError(f"({device}, {name}) is not in profiler.counters.COUNTERS")
    return Metric(counter, "gauge", prom, source, equivalent)


def _total(device: str, name: str, unit: str, prom: str, help: str, source: str,
           equivalent: str = "-") -> Metric:
    return Metric(CounterMetric(device, name, unit, help), "counter", prom, source, equivalent)


_NVL_KIB = "NVML field {} (cumulative KiB), delta over the field's own timestamps"
_GPM = "NVML GPM metric {} (two samples >= 100 ms apart)"

METRICS: tuple[Metric, ...] = (
    _gauge(NVLINK, TX_BYTES_PER_S, "dualscope_nvlink_transmit_bytes_per_second",
           _NVL_KIB.format("138 DATA_TX, scope all links"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011, counts headers too); nvidia-smi nvlink -gt d"),
    _gauge(NVLINK, RX_BYTES_PER_S, "dualscope_nvlink_receive_bytes_per_second",
           _NVL_KIB.format("139 DATA_RX, scope all links"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012, counts headers too); nvidia-smi nvlink -gt d"),
    _gauge(NVLINK, "raw_tx_bytes_per_s", "dualscope_nvlink_raw_transmit_bytes_per_second",
           _NVL_KIB.format("140 RAW_TX"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011); nvidia-smi nvlink -gt r"),
    _gauge(NVLINK, "raw_rx_bytes_per_s", "dualscope_nvlink_raw_receive_bytes_per_second",
           _NVL_KIB.format("141 RAW_RX"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012); nvidia-smi nvlink -gt r"),
    _gauge(NVLINK, "gpm_tx_bytes_per_s", "dualscope_nvlink_gpm_transmit_bytes_per_second",
           _GPM.format("61 NVLINK_TOTAL_TX_PER_SEC (MiB/s)"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011)"),
    _gauge(NVLINK, "gpm_rx_bytes_per_s", "dualscope_nvlink_gpm_receive_bytes_per_second",
           _GPM.format("60 NVLINK_TOTAL_RX_PER_SEC (MiB/s)"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012)"),
    _gauge(NVLINK, "link_count", "dualscope_nvlink_links",
           "nvmlDeviceGetNvLinkState over field 91 LINK_COUNT",
           "nvidia-smi nvlink -s"),
    _gauge(NVLINK, PEAK_BYTES_PER_S, "dualscope_nvlink_peak_bytes_per_second",
           "field 90 SPEED_MBPS_COMMON (MB/s per link, one direction)",
           "nvidia-smi nvlink -s"),
    _total(NVLINK, "tx_bytes", "bytes", "dualscope_nvlink_transmit_bytes_total",
           "NVLink data sent since the agent started",
           "sum of valid tx_bytes_per_s intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL (tx + rx)"),
    _total(NVLINK, "rx_bytes", "bytes", "dualscope_nvlink_receive_bytes_total",
           "NVLink data received since the agent started",
           "sum of valid rx_bytes_per_s intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL (tx + rx)"),
    _total(NVLINK, "raw_tx_bytes", "bytes", "dualscope_nvlink_raw_transmit_bytes_total",
           "NVLink data plus overhead sent since the agent started",
           "sum of valid raw_tx_bytes_per_s intervals", "-"),
    _total(NVLINK, "raw_rx_bytes", "bytes", "dualscope_nvlink_raw_receive_bytes_total",
           "NVLink data plus overhead received since the agent started",
           "sum of valid raw_rx_bytes_per_s intervals", "-"),
    _gauge(NVLINK_LINK, TX_BYTES_PER_S, "dualscope_nvlink_link_transmit_bytes_per_second",
           _NVL_KIB.format("138 DATA_TX, scope link"),
           "DCGM_FI_PROF_NVLINK_L<n>_TX_BYTES (1040+)"),
    _gauge(NVLINK_LINK, RX_BYTES_PER_S, "dualscope_nvlink_link_receive_bytes_per_second",
           _NVL_KIB.format("139 DATA_RX, scope link"),
           "DCGM_FI_PROF_NVLINK_L<n>_RX_BYTES (1040+)"),
    _gauge(NVLINK_LINK, PEAK_BYTES_PER_S, "dualscope_nvlink_link_peak_bytes_per_second",
           "field 90 SPEED_MBPS_COMMON (MB/s)",
           "nvidia-smi nvlink -s"),
    _total(NVLINK_LINK, "tx_bytes", "bytes", "dualscope_nvlink_link_transmit_bytes_total",
           "NVLink data sent on one link",
           "sum of valid intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L<n>"),
    _total(NVLINK_LINK, "rx_bytes", "bytes", "dualscope_nvlink_link_receive_bytes_total",
           "NVLink data received on one link",
           "sum of valid intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L<n>"),
    _gauge(SM, "sm_util_ratio", "dualscope_sm_util_ratio",
           _GPM.format("2 SM_UTIL (%)"),
           "DCGM_FI_PROF_SM_ACTIVE (1002)"),
    _gauge(SM, "sm_occupancy_ratio", "dualscope_sm_occupancy_ratio",
           _GPM.format("3 SM_OCCUPANCY (%)"),
           "DCGM_FI_PROF_SM_OCCUPANCY (1003)"),
    _gauge(SM, "tensor_util_ratio", "dualscope_tensor_util_ratio",
           _GPM.format("5 ANY_TENSOR_UTIL (%)"),
           "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE (1004)"),
    _gauge(SM, "sm_clock_hz", "dualscope_sm_clock_hertz",
           "nvmlDeviceGetClockInfo(NVML_CLOCK_SM) (MHz)",
           "DCGM_FI_DEV_SM_CLOCK (100, MHz); nvidia-smi clocks.sm"),
    _gauge(SM, "comm_sms", "dualscope_comm_sms",
           "kernel spans: sum of min(grid, SMs) over running comm kernels",
           "-"),
    _gauge(SM, "compute_sms", "dualscope_compute_sms",
           "kernel spans: min(SMs - comm, sum over running compute kernels)",
           "-"),
    _gauge(GPU, "dram_bw_util_ratio", "dualscope_dram_bw_util_ratio",
           _GPM.format("10 DRAM_BW_UTIL (%)"),
           "DCGM_FI_PROF_DRAM_ACTIVE (1005)"),
    _gauge(GPU, "gpu_util_ratio", "dualscope_gpu_util_ratio",
           "nvmlDeviceGetUtilizationRates().gpu (%)",
           "DCGM_FI_DEV_GPU_UTIL (203); nvidia-smi utilization.gpu"),
    _gauge(GPU, "power_w", "dualscope_power_watts",
           "nvmlDeviceGetPowerUsage (mW)",
           "DCGM_FI_DEV_POWER_USAGE (155); nvidia-smi power.draw"),
    _gauge(PCIE, "pcie_tx_bytes_per_s", "dualscope_pcie_transmit_bytes_per_second",
           "NVML field 197 PCIE_COUNT_TX_BYTES (cumulative bytes)",
           "DCGM_FI_PROF_PCIE_TX_BYTES (1009)"),
    _gauge(PCIE, "pcie_rx_bytes_per_s", "dualscope_pcie_receive_bytes_per_second",
           "NVML field 198 PCIE_COUNT_RX_BYTES (cumulative bytes)",
           "DCGM_FI_PROF_PCIE_RX_BYTES (1010)"),
    _total(PCIE, "pcie_tx_bytes", "bytes", "dualscope_pcie_transmit_bytes_total",
           "PCIe bytes sent since the agent started",
           "sum of valid intervals", "-"),
    _total(PCIE, "pcie_rx_bytes", "bytes", "dualscope_pcie_receive_bytes_total",
           "PCIe bytes received since the agent started",
           "sum of valid intervals", "-"),
    _gauge(IB, TX_BYTES_PER_S, "dualscope_ib_transmit_bytes_per_second",
           "sysfs counters/port_xmit_data x 4",
           "perfquery -x PortXmitData x 4 (no DCGM field)"),
    _gauge(IB, RX_BYTES_PER_S, "dualscope_ib_receive_bytes_per_second",
           "sysfs counters/port_rcv_data x 4",
           "perfquery -x PortRcvData x 4"),
    _gauge(IB, "tx_packets_per_s", "dualscope_ib_transmit_packets_per_second",
           "sysfs counters/port_xmit_packets",
           "perfquery PortXmitPkts"),
    _gauge(IB, "rx_packets_per_s", "dualscope_ib_receive_packets_per_second",
           "sysfs counters/port_rcv_packets",
           "perfquery PortRcvPkts"),
    _gauge(IB, "xmit_wait_ticks_per_s", "dualscope_ib_xmit_wait_ticks_per_second",
           "sysfs counters/port_xmit_wait",
           "perfquery PortXmitWait"),
    _gauge(IB, PEAK_BYTES_PER_S, "dualscope_ib_peak_bytes_per_second",
           "sysfs rate ('400 Gb/sec (4X NDR)') / 8",
           "ibstat Rate"),
    _total(IB, "tx_bytes", "bytes", "dualscope_ib_transmit_bytes_total",
           "bytes sent since the agent started",
           "sum of valid intervals", "-"),
    _total(IB, "rx_bytes", "bytes", "dualscope_ib_receive_bytes_total",
           "bytes received since the agent started",
           "sum of valid intervals", "-"),
    _total(IB, "tx_packets", "packets", "dualscope_ib_transmit_packets_total",
           "packets sent since the agent started",
           "sum of valid intervals", "-"),
    _total(IB, "rx_packets", "packets", "dualscope_ib_receive_packets_total",
           "packets received since the agent started",
           "sum of valid intervals", "-"),
    _total(IB, "xmit_wait_ticks", "ticks", "dualscope_ib_xmit_wait_ticks_total",
           "congestion ticks since the agent started",
           "sum of valid intervals", "-"),
)

_BY_KEY = {(m.device, m.name): m for m in METRICS}


def lookup(device: str, name: str) -> Metric | None:
    return _BY_KEY.get((device_kind(device), name))


def markdown_table() -> str:
    """The table for docs/probes.md."""
    lines = [
        "| device | metric | unit | Prometheus | source | nvidia-smi / DCGM / IB tools |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        name = m.name if m.kind == "gauge" else f"({m.name}, Prometheus only)"
        lines.append(f"| `{m.device}` | `{name}` | {m.unit} | `{m.prom}` | {m.source} | "
                     f"{m.equivalent} |")
    return "\n".join(lines) + "\n"
