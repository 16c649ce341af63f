"""The one table of every metric the probes write: its counter-row name (unit in the name),
the device it is written on, the Prometheus family it is served as, and the nvidia-smi /
DCGM / sysfs equivalent a user already knows.

Counter rows (``RUN/counters/<node>/``) are gauges over the sample interval that ends at
``ts_ns``: a rate is bytes moved in that interval divided by its length. Prometheus also gets
the cumulative byte / packet counts as ``_total`` counters (only intervals that were valid
are added, so a counter reset or 32-bit saturation never shows up as traffic).
``docs/probes.md`` holds :func:`markdown_table` verbatim; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Metric", "METRICS", "device_kind", "lookup", "markdown_table", "PROM_PREFIX"]

PROM_PREFIX = "dualscope_"


@dataclass(frozen=True)
class Metric:
    #: device kind the row is written on: ``nvlink``, ``nvlink:L`` (one link), ``gpu``,
    #: ``sm``, ``pcie``, ``ib`` (``ib:HCA:PORT``)
    device: str
    #: counter-row metric name (unit in the name); for ``kind == "counter"`` the name of the
    #: cumulative value, which is served to Prometheus only
    name: str
    unit: str
    #: ``gauge``: written to the run each sample and served as a gauge;
    #: ``counter``: cumulative, served as ``<prom>`` (which ends in ``_total``)
    kind: str
    prom: str
    help: str
    source: str
    equivalent: str = "-"


_NVL_KIB = "NVML field {} (cumulative KiB), delta over the field's own timestamps"
_GPM = "NVML GPM metric {} (two samples >= 100 ms apart)"

METRICS: tuple[Metric, ...] = (
    # -- NVLink, whole GPU ------------------------------------------------------------------
    Metric("nvlink", "tx_bytes_per_s", "B/s", "gauge", "dualscope_nvlink_transmit_bytes_per_second",
           "NVLink data sent by the GPU, all links", _NVL_KIB.format("138 DATA_TX, scope all links"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011, counts headers too); nvidia-smi nvlink -gt d"),
    Metric("nvlink", "rx_bytes_per_s", "B/s", "gauge", "dualscope_nvlink_receive_bytes_per_second",
           "NVLink data received by the GPU, all links", _NVL_KIB.format("139 DATA_RX, scope all links"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012, counts headers too); nvidia-smi nvlink -gt d"),
    Metric("nvlink", "raw_tx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_raw_transmit_bytes_per_second",
           "NVLink data plus protocol overhead sent, all links", _NVL_KIB.format("140 RAW_TX"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011); nvidia-smi nvlink -gt r"),
    Metric("nvlink", "raw_rx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_raw_receive_bytes_per_second",
           "NVLink data plus protocol overhead received, all links", _NVL_KIB.format("141 RAW_RX"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012); nvidia-smi nvlink -gt r"),
    Metric("nvlink", "gpm_tx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_gpm_transmit_bytes_per_second",
           "NVLink write bandwidth, all links, from GPM", _GPM.format("61 NVLINK_TOTAL_TX_PER_SEC (MiB/s)"),
           "DCGM_FI_PROF_NVLINK_TX_BYTES (1011)"),
    Metric("nvlink", "gpm_rx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_gpm_receive_bytes_per_second",
           "NVLink read bandwidth, all links, from GPM", _GPM.format("60 NVLINK_TOTAL_RX_PER_SEC (MiB/s)"),
           "DCGM_FI_PROF_NVLINK_RX_BYTES (1012)"),
    Metric("nvlink", "link_count", "links", "gauge", "dualscope_nvlink_links",
           "active NVLink links of the GPU", "nvmlDeviceGetNvLinkState over field 91 LINK_COUNT",
           "nvidia-smi nvlink -s"),
    Metric("nvlink", "peak_bytes_per_s", "B/s", "gauge", "dualscope_nvlink_peak_bytes_per_second",
           "one-direction peak of all active links (links x link speed)",
           "field 90 SPEED_MBPS_COMMON (MB/s per link, one direction)", "nvidia-smi nvlink -s"),
    Metric("nvlink", "tx_bytes", "bytes", "counter", "dualscope_nvlink_transmit_bytes_total",
           "NVLink data sent since the agent started", "sum of valid tx_bytes_per_s intervals",
           "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL (tx + rx)"),
    Metric("nvlink", "rx_bytes", "bytes", "counter", "dualscope_nvlink_receive_bytes_total",
           "NVLink data received since the agent started", "sum of valid rx_bytes_per_s intervals",
           "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL (tx + rx)"),
    Metric("nvlink", "raw_tx_bytes", "bytes", "counter", "dualscope_nvlink_raw_transmit_bytes_total",
           "NVLink data plus overhead sent since the agent started",
           "sum of valid raw_tx_bytes_per_s intervals", "-"),
    Metric("nvlink", "raw_rx_bytes", "bytes", "counter", "dualscope_nvlink_raw_receive_bytes_total",
           "NVLink data plus overhead received since the agent started",
           "sum of valid raw_rx_bytes_per_s intervals", "-"),
    # -- NVLink, one link -------------------------------------------------------------------
    Metric("nvlink:L", "tx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_link_transmit_bytes_per_second",
           "NVLink data sent on one link (from GPM when the driver repeats the GPU total per link)",
           _NVL_KIB.format("138 DATA_TX, scope link"), "DCGM_FI_PROF_NVLINK_L<n>_TX_BYTES (1040+)"),
    Metric("nvlink:L", "rx_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_link_receive_bytes_per_second",
           "NVLink data received on one link (from GPM when the driver repeats the GPU total)",
           _NVL_KIB.format("139 DATA_RX, scope link"), "DCGM_FI_PROF_NVLINK_L<n>_RX_BYTES (1040+)"),
    Metric("nvlink:L", "peak_bytes_per_s", "B/s", "gauge",
           "dualscope_nvlink_link_peak_bytes_per_second", "one-direction speed of the link",
           "field 90 SPEED_MBPS_COMMON (MB/s)", "nvidia-smi nvlink -s"),
    Metric("nvlink:L", "tx_bytes", "bytes", "counter",
           "dualscope_nvlink_link_transmit_bytes_total", "NVLink data sent on one link",
           "sum of valid intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L<n>"),
    Metric("nvlink:L", "rx_bytes", "bytes", "counter",
           "dualscope_nvlink_link_receive_bytes_total", "NVLink data received on one link",
           "sum of valid intervals", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L<n>"),
    # -- SMs and the GPU as a whole ---------------------------------------------------------
    Metric("sm", "sm_util_ratio", "ratio", "gauge", "dualscope_sm_util_ratio",
           "share of SMs busy (whole GPU: cannot split compute from communication)",
           _GPM.format("2 SM_UTIL (%)"), "DCGM_FI_PROF_SM_ACTIVE (1002)"),
    Metric("sm", "sm_occupancy_ratio", "ratio", "gauge", "dualscope_sm_occupancy_ratio",
           "resident warps / theoretical maximum", _GPM.format("3 SM_OCCUPANCY (%)"),
           "DCGM_FI_PROF_SM_OCCUPANCY (1003)"),
    Metric("sm", "tensor_util_ratio", "ratio", "gauge", "dualscope_tensor_util_ratio",
           "share of time SMs ran any tensor-core op", _GPM.format("5 ANY_TENSOR_UTIL (%)"),
           "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE (1004)"),
    Metric("sm", "sm_clock_hz", "Hz", "gauge", "dualscope_sm_clock_hertz", "SM clock",
           "nvmlDeviceGetClockInfo(NVML_CLOCK_SM) (MHz)",
           "DCGM_FI_DEV_SM_CLOCK (100, MHz); nvidia-smi clocks.sm"),
    Metric("sm", "comm_sms", "SMs", "gauge", "dualscope_comm_sms",
           "SMs held by communication kernels (mean over the interval)",
           "kernel spans: sum of min(grid, SMs) over running comm kernels", "-"),
    Metric("sm", "compute_sms", "SMs", "gauge", "dualscope_compute_sms",
           "SMs held by compute kernels (mean over the interval)",
           "kernel spans: min(SMs - comm, sum over running compute kernels)", "-"),
    Metric("gpu", "dram_bw_util_ratio", "ratio", "gauge", "dualscope_dram_bw_util_ratio",
           "DRAM bandwidth used / peak", _GPM.format("10 DRAM_BW_UTIL (%)"),
           "DCGM_FI_PROF_DRAM_ACTIVE (1005)"),
    Metric("gpu", "gpu_util_ratio", "ratio", "gauge", "dualscope_gpu_util_ratio",
           "share of time a kernel was running (not SM occupancy)",
           "nvmlDeviceGetUtilizationRates().gpu (%)",
           "DCGM_FI_DEV_GPU_UTIL (203); nvidia-smi utilization.gpu"),
    Metric("gpu", "power_w", "W", "gauge", "dualscope_power_watts", "board power draw",
           "nvmlDeviceGetPowerUsage (mW)", "DCGM_FI_DEV_POWER_USAGE (155); nvidia-smi power.draw"),
    Metric("pcie", "pcie_tx_bytes_per_s", "B/s", "gauge", "dualscope_pcie_transmit_bytes_per_second",
           "PCIe bytes sent by the GPU", "NVML field 197 PCIE_COUNT_TX_BYTES (cumulative bytes)",
           "DCGM_FI_PROF_PCIE_TX_BYTES (1009)"),
    Metric("pcie", "pcie_rx_bytes_per_s", "B/s", "gauge", "dualscope_pcie_receive_bytes_per_second",
           "PCIe bytes received by the GPU", "NVML field 198 PCIE_COUNT_RX_BYTES (cumulative bytes)",
           "DCGM_FI_PROF_PCIE_RX_BYTES (1010)"),
    Metric("pcie", "pcie_tx_bytes", "bytes", "counter", "dualscope_pcie_transmit_bytes_total",
           "PCIe bytes sent since the agent started", "sum of valid intervals", "-"),
    Metric("pcie", "pcie_rx_bytes", "bytes", "counter", "dualscope_pcie_receive_bytes_total",
           "PCIe bytes received since the agent started", "sum of valid intervals", "-"),
    # -- InfiniBand / RoCE HCA ports (node level: no gpu) -----------------------------------
    Metric("ib", "tx_bytes_per_s", "B/s", "gauge", "dualscope_ib_transmit_bytes_per_second",
           "bytes sent by the port", "sysfs counters/port_xmit_data x 4",
           "perfquery -x PortXmitData x 4 (no DCGM field)"),
    Metric("ib", "rx_bytes_per_s", "B/s", "gauge", "dualscope_ib_receive_bytes_per_second",
           "bytes received by the port", "sysfs counters/port_rcv_data x 4",
           "perfquery -x PortRcvData x 4"),
    Metric("ib", "tx_packets_per_s", "packets/s", "gauge",
           "dualscope_ib_transmit_packets_per_second", "packets sent by the port",
           "sysfs counters/port_xmit_packets", "perfquery PortXmitPkts"),
    Metric("ib", "rx_packets_per_s", "packets/s", "gauge",
           "dualscope_ib_receive_packets_per_second", "packets received by the port",
           "sysfs counters/port_rcv_packets", "perfquery PortRcvPkts"),
    Metric("ib", "xmit_wait_ticks_per_s", "ticks/s", "gauge",
           "dualscope_ib_xmit_wait_ticks_per_second",
           "ticks with data to send but no credits (congestion)", "sysfs counters/port_xmit_wait",
           "perfquery PortXmitWait"),
    Metric("ib", "peak_bytes_per_s", "B/s", "gauge", "dualscope_ib_peak_bytes_per_second",
           "one-direction port rate", "sysfs rate ('400 Gb/sec (4X NDR)') / 8", "ibstat Rate"),
    Metric("ib", "tx_bytes", "bytes", "counter", "dualscope_ib_transmit_bytes_total",
           "bytes sent since the agent started", "sum of valid intervals", "-"),
    Metric("ib", "rx_bytes", "bytes", "counter", "dualscope_ib_receive_bytes_total",
           "bytes received since the agent started", "sum of valid intervals", "-"),
    Metric("ib", "tx_packets", "packets", "counter", "dualscope_ib_transmit_packets_total",
           "packets sent since the agent started", "sum of valid intervals", "-"),
    Metric("ib", "rx_packets", "packets", "counter", "dualscope_ib_receive_packets_total",
           "packets received since the agent started", "sum of valid intervals", "-"),
    Metric("ib", "xmit_wait_ticks", "ticks", "counter", "dualscope_ib_xmit_wait_ticks_total",
           "congestion ticks since the agent started", "sum of valid intervals", "-"),
)

_BY_KEY = {(m.device, m.name): m for m in METRICS}


def device_kind(device: str) -> str:
    """``nvlink:3`` -> ``nvlink:L``; ``ib:mlx5_0:1`` -> ``ib``; others unchanged."""
    if device.startswith("nvlink:"):
        return "nvlink:L"
    if device.startswith("ib:"):
        return "ib"
    return device


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
