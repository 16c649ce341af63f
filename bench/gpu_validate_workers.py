"""The parts of bench/gpu_validate.py that run inside a subprocess (so that a hang or a crash
costs one step): what this machine has, the cost of each NVML call, a GEMM load, and a
torch.profiler (Kineto) trace.

    python bench/gpu_validate_workers.py KIND --result FILE.json [options]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import platform
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

UINT_MAX = 0xFFFFFFFF
#: (label, NVML field id, scope) timed one by one: the fields the NVML collector reads
NVML_FIELDS = [
    ("f138_data_tx_all", 138, UINT_MAX), ("f139_data_rx_all", 139, UINT_MAX),
    ("f138_data_tx_link0", 138, 0), ("f139_data_rx_link0", 139, 0),
    ("f140_raw_tx_all", 140, UINT_MAX), ("f141_raw_rx_all", 141, UINT_MAX),
    ("f197_pcie_tx", 197, 0), ("f198_pcie_rx", 198, 0),
    ("f90_link_speed", 90, 0), ("f91_link_count", 91, 0),
]
GPM_METRICS = (2, 3, 5, 10, 60, 61)  # SM util, occupancy, tensor, DRAM, NVLink rx / tx


def worker_env() -> dict[str, Any]:
    import importlib.metadata as md

    pkgs: dict[str, str | None] = {}
    for mod, dist in (("torch", "torch"), ("orjson", "orjson"), ("pyarrow", "pyarrow"),
                      ("pandas", "pandas"), ("numpy", "numpy"), ("click", "click"),
                      ("prometheus_client", "prometheus_client"), ("pynvml", "nvidia-ml-py")):
        try:
            __import__(mod)
            pkgs[mod] = md.version(dist)
        except Exception:
            pkgs[mod] = None
    out: dict[str, Any] = {"python": platform.python_version(), "host": socket.gethostname(),
                           "packages": pkgs, "cuda": None, "dualpipev": False,
                           "commands": _command_modules()}
    try:
        from torch.distributed.pipelining import ScheduleDualPipeV  # noqa: F401
        out["dualpipev"] = True
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out["cuda"] = {"name": p.name, "sms": p.multi_processor_count,
                           "memory_gib": p.total_memory / 2**30, "capability": f"{p.major}.{p.minor}",
                           "devices": torch.cuda.device_count(), "cuda": torch.version.cuda}
            with contextlib.suppress(Exception):
                out["cuda"]["nccl"] = str(torch.cuda.nccl.version())
    return out


#: the CLI commands the kit drives (bench/gpu_validate.py)
KIT_COMMANDS = ("probe", "run-reference", "import", "info", "analyze")


def _command_modules() -> dict[str, str | None]:
    """Import the module behind each command the kit drives, as ``python -m dualscope CMD``
    would: command -> None, or the error (a missing module is named). The package list above
    cannot know every third-party module the project imports (msgspec was missing on the
    first H200 run, 2026-12-04, and passed that list)."""
    import importlib

    res: dict[str, str | None] = {}
    try:
        from dualscope.cli import COMMANDS
    except Exception as e:  # noqa: BLE001 - recorded, the check names it
        return {"dualscope.cli": f"{type(e).__name__}: {e}"}
    for cmd in KIT_COMMANDS:
        try:
            importlib.import_module(COMMANDS[cmd].split(":")[0])
            res[cmd] = None
        except Exception as e:  # noqa: BLE001 - recorded, the check names it
            res[cmd] = f"{type(e).__name__}: {e}"
    return res


def worker_nvml_cost(repeat: int) -> dict[str, Any]:

    import pynvml as nv

    def timed(fn: Callable[[], Any]) -> dict[str, Any]:
        ts, res = [], None
        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                res = fn()
                ts.append(time.perf_counter() - t0)
        except nv.NVMLError as e:
            return {"error": f"{e} ({type(e).__name__})"}
        ts.sort()
        return {"median_us": 1e6 * statistics.median(ts), "p90_us": 1e6 * ts[int(0.9 * len(ts))],
                "result": res}

    nv.nvmlInit()
    try:
        h = nv.nvmlDeviceGetHandleByIndex(0)
        calls: dict[str, dict[str, Any]] = {}
        for label, fid, scope in NVML_FIELDS:
            r = timed(_field_call(nv, h, fid, scope))
            v = r.pop("result", None)
            if v is not None:
                r["nvmlReturn"] = int(v[0].nvmlReturn)
                if v[0].nvmlReturn == 0:
                    r["value"] = int(v[0].value.ullVal if v[0].valueType == 3 else v[0].value.uiVal)
            calls[label] = r
        ids = [(fid, scope) for _, fid, scope in NVML_FIELDS]
        calls["fields_all_public"] = timed(lambda: nv.nvmlDeviceGetFieldValues(h, ids))
        try:  # the collector's fast path: the C function on a prepared array
            fn = nv._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
            arr = (nv.c_nvmlFieldValue_t * len(ids))()
            for i, (fid, scope) in enumerate(ids):
                arr[i].fieldId, arr[i].scopeId = fid, scope
            n = ctypes.c_int32(len(ids))
            calls["fields_all_c_pointer"] = timed(lambda: fn(h, n, ctypes.byref(arr)))
        except (AttributeError, nv.NVMLError) as e:
            calls["fields_all_c_pointer"] = {"error": repr(e)}
        calls["utilization"] = timed(lambda: nv.nvmlDeviceGetUtilizationRates(h))
        calls["clock_sm"] = timed(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        calls["power"] = timed(lambda: nv.nvmlDeviceGetPowerUsage(h))
        calls["nvlink_state_link0"] = timed(lambda: nv.nvmlDeviceGetNvLinkState(h, 0))
        active = 0
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            try:
                active += nv.nvmlDeviceGetNvLinkState(h, link) == nv.NVML_FEATURE_ENABLED
            except nv.NVMLError:
                break
        calls.update(_gpm_cost(nv, h, timed))
        for r in calls.values():
            r.pop("result", None)
        return {"name": str(nv.nvmlDeviceGetName(h)), "driver": str(nv.nvmlSystemGetDriverVersion()),
                "gpus": nv.nvmlDeviceGetCount(), "active_links": active, "repeat": repeat,
                "calls": calls}
    finally:
        nv.nvmlShutdown()


def _field_call(nv: Any, h: Any, fid: int, scope: int) -> Callable[[], Any]:
    return lambda: nv.nvmlDeviceGetFieldValues(h, [(fid, scope)])


def _gpm_cost(nv: Any, h: Any, timed: Callable[[Callable[[], Any]], dict[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    try:
        if not nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice:
            return {"gpm_sample_get": {"error": "GPM not supported on this GPU"}}
        s1, s2 = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
    except nv.NVMLError as e:
        return {"gpm_sample_get": {"error": f"{e} ({type(e).__name__})"}}
    try:
        out = {"gpm_sample_get": timed(lambda: nv.nvmlGpmSampleGet(h, s1))}
        time.sleep(0.11)  # NVML: two samples more than 100 ms apart
        nv.nvmlGpmSampleGet(h, s2)
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version, mg.numMetrics, mg.sample1, mg.sample2 = (
            nv.NVML_GPM_METRICS_GET_VERSION, len(GPM_METRICS), s1, s2)
        for i, mid in enumerate(GPM_METRICS):
            mg.metrics[i].metricId = mid
        out["gpm_metrics_get"] = timed(lambda: nv.nvmlGpmMetricsGet(mg))
        return out
    finally:
        for s in (s1, s2):
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlGpmSampleFree(s)


def worker_load(device: str, seconds: float, ready: Path) -> dict[str, Any]:
    """GEMMs in a loop until ``seconds`` pass or SIGTERM; the achieved rate."""
    import torch

    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    cuda = device == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # leave the other cores to the agent
    n, dtype = (8192, torch.bfloat16) if cuda else (256, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    ready.write_text("ready\n")
    iters, t0 = 0, time.perf_counter()
    while not stop[0] and time.perf_counter() - t0 < seconds:
        for _ in range(20 if cuda else 1):
            a @ b
        iters += 20 if cuda else 1
        if cuda:
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "n": n,
            "dtype": str(dtype), "iters": iters, "seconds": dt,
            "tflops": 2 * n**3 * iters / dt / 1e12}


def worker_kineto(device: str, trace: Path) -> dict[str, Any]:
    """A torch.profiler (Kineto) trace of GEMMs on two CUDA streams (CPU ops on CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n, dtype = (4096, torch.bfloat16) if cuda else (128, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    side = torch.cuda.Stream() if cuda else None
    (a @ b).relu().sum()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        for i in range(3):
            with record_function(f"ProfilerStep#{i}"):
                c = (a @ b).relu()
                if side is not None:
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        d = b @ a
                    torch.cuda.current_stream().wait_stream(side)
                    c = c + d
                c.sum()
                if cuda:  # inside the step: its kernels end within the step's window
                    torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text()).get("traceEvents", [])
    return {"torch": torch.__version__, "events": len(events), "bytes": trace.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("env", "nvml-cost", "load", "kineto"))
    ap.add_argument("--result", required=True, help="JSON file to write")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--seconds", type=float, default=10.0, help="load: how long at most")
    ap.add_argument("--ready", help="load: file written once warmed up")
    ap.add_argument("--trace", help="kineto: trace file to write")
    ap.add_argument("--repeat", type=int, default=200, help="nvml-cost: calls per median")
    args = ap.parse_args(argv)
    if args.kind == "env":
        r = worker_env()
    elif args.kind == "nvml-cost":
        r = worker_nvml_cost(args.repeat)
    elif args.kind == "load":
        r = worker_load(args.device, args.seconds, Path(args.ready))
    else:
        r = worker_kineto(args.device, Path(args.trace))
    Path(args.result).write_text(json.dumps(r, indent=1, default=str))


if __name__ == "__main__":
    main()
