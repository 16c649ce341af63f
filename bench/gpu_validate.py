"""GPU validation kit (issue 15): one prepared script that runs every GPU path of dualscope on
one NVIDIA H100 / H200 within one call of at most 8 minutes, and the same steps on a CPU
machine with the pynvml test double (``--dry-run``), so the kit is exercised by the tests and
cannot rot. What each check proves, and what one GPU cannot show: docs/gpu-validation.md.

    python3 bench/gpu_validate.py --out /tmp/gpuval              # on the GPU machine
    python3 bench/gpu_validate.py --out /tmp/gpuval --dry-run    # anywhere, ~1 min

Everything goes through the command line (``python -m dualscope probe | run-reference |
import | info | analyze``) and the documented run format (docs/trace-format.md); the kit (this
file, gpu_validate_run.py: running and recording, gpu_validate_workers.py: what runs in a
subprocess) imports nothing of the project, so refactors of its Python APIs cannot break it.
Every step runs in subprocesses in their own session, each with a timeout clipped to the
step's timeout and to the overall budget (``--budget-s``): a hang costs its step, never the
whole call. A failing step is recorded and the next one runs. Exit code 0 only when every step ran and every
check passed (or is not applicable, with the reason written down).

Output folder: ``summary.json`` (steps, checks, figures with units), ``results.md`` (the table
of docs/gpu-validation.md, filled), ``logs/`` (stdout / stderr of every command) and the run
directories (``probe-run``, ``ref-run``, ``kineto-trace``, ``kineto-run``, ``smsplit-run``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_validate_run import (
    PY,
    ROOT,
    WORKERS,
    Ctx,
    Popen,
    Step,
    StepFailed,
    StepTimeout,
    manifest,
    median,
    proc_cpu_s,
    read_frames,
    run_steps,
    say,
    summarise,
    write_reports,
)
from gpu_validate_workers import NVML_FIELDS

FIXTURE = ROOT / "tests" / "fixtures" / "kineto" / "gpu_streams_and_flows" / "rank2.json"
#: the agent's CPU ceiling at 10 Hz (% of one core): one GPU on the C fast path, and the
#: Python double on a possibly slow shared core
GPU_AGENT_CPU_MAX_PCT = 5.0
DRY_AGENT_CPU_MAX_PCT = 25.0


def kineto_kernels(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    return [e for e in doc.get("traceEvents", []) if isinstance(e, dict)
            and e.get("cat") == "kernel" and e.get("ph") == "X"]


# -- steps ----------------------------------------------------------------------------------------
def step_env(ctx: Ctx) -> None:
    info = ctx.worker("env", "env", timeout=90)
    ctx.facts["env"] = info
    if shutil.which("nvidia-smi"):
        ctx.facts["nvidia_smi"] = ctx.run(
            "nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                           "clocks.max.sm,power.limit", "--format=csv,noheader"],
            timeout=30, ok_rc=False).strip()
    missing = [k for k, v in info["packages"].items() if v is None]
    broken = {cmd: err for cmd, err in info.get("commands", {}).items() if err}
    ctx.check("deps_importable", not missing and not broken,
              f"missing: {missing}; commands that do not import: {broken} "
              "(carry wheels, docs/gpu-validation.md)" if missing or broken else
              f"{', '.join(info['packages'])}; the modules of "
              f"{', '.join(info.get('commands', {}))} import")
    ctx.check("torch_pipelining", info["dualpipev"],
              f"torch {info['packages'].get('torch')}: ScheduleDualPipeV "
              f"{'importable' if info['dualpipev'] else 'missing (reference run needs torch >= 2.9)'}")
    cuda = info["cuda"]
    if ctx.dry:
        ctx.check("cuda_available", None, f"dry-run: CPU only (torch sees CUDA: {bool(cuda)})")
    else:
        ctx.check("cuda_available", bool(cuda), str(cuda or "torch.cuda.is_available() is False"))
    if cuda:
        ctx.figure("gpu_sms", cuda["sms"], "SMs")
        ctx.figure("gpu_memory_gib", cuda["memory_gib"], "GiB")


def step_selftest(ctx: Ctx) -> None:
    out = ctx.dualscope("selftest", "probe", "--selftest", timeout=60, nvml=True)
    nvml = out.split("[nvml]", 1)[1].split("\n[", 1)[0] if "[nvml]" in out else ""
    ctx.check("selftest_nvml_available", nvml.startswith(" available"),
              (nvml.splitlines()[0].strip() if nvml else "no [nvml] section") + ctx.src)
    ctx.check("selftest_gpm_available", "gpm: yes" in nvml, _line(nvml, "gpm:") + ctx.src)
    ctx.check("selftest_nvml_fast_path", "field values via C pointer" in nvml,
              _line(nvml, "gpu 0") + ctx.src)
    m = re.search(r"cost per sample: ([0-9.]+) ms", nvml)
    ctx.figure("selftest_nvml_cost_per_sample_ms", float(m.group(1)) if m else None, "ms")


def _line(text: str, key: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if key in ln), f"no '{key}' line")[:160]


def step_nvml_cost(ctx: Ctx) -> None:
    r = ctx.worker("nvml_cost", "nvml-cost", "--repeat", "50" if ctx.dry else "200",
                   timeout=60, nvml=True)
    ctx.facts["nvml"] = r
    timed = {k: v for k, v in r["calls"].items() if v.get("median_us") is not None}
    for k, v in timed.items():
        ctx.figure(f"nvml_us.{k}", v["median_us"], "us")
    ctx.figure("nvml_active_links", r["active_links"], "links")
    ctx.figure("nvml_field90_link_speed", r["calls"]["f90_link_speed"].get("value"),
               "MB/s per link and direction (as NVML reports)")
    failed = sorted(set(r["calls"]) - set(timed))
    ctx.check("nvml_calls_timed", len(timed) >= len(NVML_FIELDS) + 4,
              f"{len(timed)} calls timed (median of {r['repeat']}); failed: {failed or 'none'}"
              + ctx.src, r["calls"]["fields_all_public"].get("median_us"), "us all fields")
    pcie = {k: r["calls"][k].get("nvmlReturn") for k in ("f197_pcie_tx", "f198_pcie_rx")}
    ctx.check("nvml_pcie_fields_answer", all(v == 0 for v in pcie.values()),
              f"nvmlReturn {pcie}" + ctx.src)
    nvl = {k: r["calls"][k].get("nvmlReturn") for k in ("f138_data_tx_all", "f139_data_rx_all",
                                                          "f140_raw_tx_all", "f141_raw_rx_all")}
    ctx.check("nvml_nvlink_fields_answer",
              None if not r["active_links"] else all(v == 0 for v in nvl.values()),
              f"nvmlReturn at scope UINT_MAX {nvl}; active links {r['active_links']}" + ctx.src)


def step_agent_load(ctx: Ctx) -> None:
    run = ctx.out / "probe-run"
    dev = "cpu" if ctx.dry else "cuda"
    ready, res = ctx.out / "logs" / "load.ready", ctx.out / "logs" / "load.json"
    load = ctx.spawn("load", [PY, str(WORKERS), "load", "--device", dev, "--seconds",
                              str(ctx.agent_s + 30), "--ready", str(ready), "--result", str(res)])
    agent: Popen | None = None
    try:
        _wait(lambda: ready.exists(), ctx.left(90), "the load's warm-up", load)
        agent = ctx.spawn("agent", [PY, "-m", "dualscope", "probe", "--out", str(run),
                                    "--interval", "0.1", "--metrics-port", "0"], ctx.nvml_env)
        url = _wait(lambda: _metrics_url(run), ctx.left(60), "the agent's /metrics URL", agent)
        time.sleep(1.0)  # past start-up: the CPU window is the steady state
        cpu0, t0 = proc_cpu_s(agent.pid), time.monotonic()
        time.sleep(ctx.agent_s / 2)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                scrape = resp.read().decode()
        except OSError as e:
            scrape = f"# scrape failed: {e}"
        (ctx.out / "probe-metrics.txt").write_text(scrape)
        time.sleep(max(0.0, ctx.agent_s / 2 - 1.0))
        cpu1, t1 = proc_cpu_s(agent.pid), time.monotonic()
        rc = agent.stop(grace=20)
        agent = None
    finally:
        if agent is not None:
            agent.stop()
        load.stop()
    lr = json.loads(res.read_text()) if res.exists() else {}
    ctx.check("load_ran", lr.get("tflops", 0) > 0,
              f"{lr.get('iters')} GEMMs {lr.get('n')}^3 {lr.get('dtype')} on {lr.get('device')}",
              lr.get("tflops"), "TFLOP/s")
    ctx.figure("load_tflops", lr.get("tflops"), "TFLOP/s")
    m = manifest(run)
    host = next(iter(m["extra"]["probe"]))
    mine = m["extra"]["probe"][host]
    ctx.check("agent_exit_clean", rc == 0 and m["status"] == "finished",
              f"SIGTERM -> exit {rc}, manifest status {m['status']}")
    rate = mine["samples"] / max(ctx.agent_s, 1e-9)
    ctx.figure("agent_samples", mine["samples"], "samples")
    ctx.figure("agent_sample_rate_hz", rate, "Hz")
    ctx.check("agent_sample_rate", rate >= 0.8 * 10,
              f"{mine['samples']} samples in ~{ctx.agent_s:.0f} s at --interval 0.1", rate, "Hz")
    pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    cap = DRY_AGENT_CPU_MAX_PCT if ctx.dry else GPU_AGENT_CPU_MAX_PCT
    ctx.figure("agent_cpu_pct", pct, "% of one core")
    ctx.figure("agent_mean_sample_ms", 1e3 * mine["mean_sample_s"], "ms")
    ctx.figure("agent_max_sample_ms", 1e3 * mine["max_sample_s"], "ms")
    ctx.check("agent_cpu_at_10hz", pct < cap,
              f"/proc user+sys over {t1 - t0:.1f} s, ceiling {cap:g} %; mean sample "
              f"{1e3 * mine['mean_sample_s']:.3f} ms{ctx.src}", pct, "% of one core")
    want = ("dualscope_sm_util_ratio", "dualscope_power_watts", "dualscope_sm_clock_hertz")
    seen = [w for w in want if re.search(rf"^{w}{{[^}}]*UUID=", scrape, re.M)]
    ctx.check("metrics_endpoint", len(seen) == len(want), f"series with a UUID label: {seen}")
    probes = m["probes"]
    states = {k: v["available"] for k, v in probes.items() if k.endswith("@" + host)}
    ctx.check("probe_states", bool(states.get(f"nvml@{host}")) and bool(states.get(f"gpm@{host}")),
              f"{states}; nvlink: {probes.get(f'nvlink@{host}', {}).get('reason', '')!r}" + ctx.src)
    _counter_checks(ctx, read_frames(run, "counters"), probes.get(f"nvlink@{host}", {}))


def _counter_checks(ctx: Ctx, c: Any, nvlink_state: dict[str, Any]) -> None:
    def values(device: str, metric: str) -> Any:
        return c[(c["device"] == device) & (c["metric"] == metric)]["value"] if len(c) else []

    ctx.figure("agent_rows", len(c), "rows")
    for dev, metric, unit, name, lo, hi in (
            ("sm", "sm_util_ratio", "ratio", "gpm_sm_util_positive", 0.0, 1.05),
            ("sm", "tensor_util_ratio", "ratio", "gpm_tensor_util_positive", 0.0, 1.05),
            ("gpu", "gpu_util_ratio", "ratio", "gpu_util_positive", 0.0, 1.0),
            ("gpu", "power_w", "W", "power_sane", 20.0, 1500.0),
            ("sm", "sm_clock_hz", "Hz", "sm_clock_sane", 2e8, 2.6e9)):
        v = values(dev, metric)
        med = median(v)
        nan = sum(1 for x in v if x != x)
        ctx.figure(f"{metric}_median", med, unit)
        ctx.figure(f"{metric}_max", max((x for x in v if x == x), default=math.nan), unit)
        ctx.check(name, lo < med <= hi if med == med else False,
                  f"{dev}/{metric}: {len(v)} rows, {nan} NaN, median {med:.4g} {unit}, "
                  f"expected ({lo:g}, {hi:g}]{ctx.src}", med, unit)
    links = values("nvlink", "link_count")
    n_links = max((x for x in links if x == x), default=math.nan)
    ctx.figure("nvlink_link_count", n_links, "links")
    ctx.figure("nvlink_peak_bytes_per_s", median(values("nvlink", "peak_bytes_per_s")), "B/s")
    tx, rx = values("nvlink", "tx_bytes_per_s"), values("nvlink", "rx_bytes_per_s")
    good = [x for x in [*tx, *rx] if x == x]
    ctx.figure("nvlink_tx_bytes_per_s_max", max((x for x in tx if x == x), default=math.nan),
               "B/s")
    if not len(links):
        ctx.check("nvlink_counters_present", False, "no nvlink/link_count rows at all")
    elif not n_links:
        ctx.check("nvlink_counters_present", None, "this GPU has no active NVLink (link_count 0; "
                  f"probe: {nvlink_state.get('reason', '')!r}): nothing to count on one GPU")
    else:
        ctx.check("nvlink_counters_present", bool(good) and min(good) >= 0,
                  f"{len(tx)} tx / {len(rx)} rx rows over {n_links:g} links, {len(good)} finite, "
                  f"max {max(good, default=math.nan):.4g} B/s (zero expected on one GPU)"
                  + ctx.src, max(good, default=math.nan), "B/s")
    p = values("pcie", "pcie_tx_bytes_per_s")
    fin = [x for x in p if x == x]
    ctx.figure("pcie_tx_bytes_per_s_median", median(p), "B/s")
    ctx.check("pcie_counters_present", bool(fin),
              f"{len(p)} pcie tx rows, {len(fin)} finite (fields 197 / 198)" + ctx.src)


def _metrics_url(run: Path) -> str | None:
    try:
        probe = manifest(run)["extra"]["probe"]
        return next((v["metrics_url"] for v in probe.values() if v.get("metrics_url")), None)
    except (OSError, KeyError, ValueError):
        return None


def _wait(pred: Callable[[], Any], timeout: float, what: str, proc: Popen) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        if proc.poll() is not None:
            raise StepFailed(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise StepTimeout(f"timed out after {timeout:.0f} s waiting for {what}")


def _reference(ctx: Ctx, run: Path, overlap: str, timeout: float) -> None:
    dev = ["--device", "cpu"] if ctx.dry else ["--device", "cuda", "--overlap", overlap]
    text = ctx.dualscope(
        run.name, "run-reference", "--out", str(run), "--nproc", "1", "--pp", "1", "--ep", "1",
        "--steps", str(ctx.ref_steps), "--profile-every", str(ctx.profile_every),
        "--timeout-s", "60", "--json", *dev, timeout=timeout)
    s = json.loads(text[text.index("{"):])  # the summary; progress lines go to stderr
    loss = [x["loss"] for x in s["loss"]]
    ctx.check("reference_finished", s["status"] == "finished" and len(loss) == ctx.ref_steps,
              f"{run.name}: status {s['status']}, {len(loss)} of {ctx.ref_steps} steps"
              f"{'' if ctx.dry else f', --overlap {overlap}'}")
    ctx.check("reference_loss_falls", len(loss) > 1 and loss[-1] < loss[0],
              f"loss {loss[0]:.4f} -> {loss[-1]:.4f} nats" if loss else "no loss",
              loss[-1] if loss else None, "nats")
    ctx.figure("ref_step_time_s_median", s.get("step_time_s_median"), "s")
    ctx.facts["ref_run"] = str(run)


def step_reference(ctx: Ctx) -> None:
    _reference(ctx, ctx.out / "ref-run", "streams", 150)


def step_reference_sequential(ctx: Ctx) -> None:
    _reference(ctx, ctx.out / "ref-run-sequential", "sequential", 100)


def _needs_sequential(ctx: Ctx) -> str | None:
    if ctx.dry:
        return "dry-run: the CPU run is sequential already"
    return "reference passed with --overlap streams" if ctx.ok("reference") else None


def step_reference_checks(ctx: Ctx) -> None:
    run = Path(ctx.facts["ref_run"])
    info = json.loads(ctx.dualscope("ref_info", "info", "--json", str(run)))
    an = json.loads(ctx.dualscope("ref_analyze", "analyze", "--json", str(run), timeout=90))
    m = manifest(run)
    probes, extra = m["probes"], m.get("extra", {})
    timers = probes.get("timers", {})
    cap = probes.get("kernel_capture", {})
    want = ("gloo", "host clock") if ctx.dry else ("nccl", "CUDA events")
    ctx.check("reference_backend", extra.get("backend") == want[0]
              and want[1] in timers.get("reason", ""),
              f"backend {extra.get('backend')}, timers: {timers.get('reason')!r}, overlap: "
              f"{probes.get('overlap_streams', {}).get('reason')!r}")
    if ctx.dry:
        ctx.check("kernel_capture_on", None, f"not applicable on CPU: {cap.get('reason')!r}")
    else:
        ctx.check("kernel_capture_on", bool(cap.get("available")), repr(cap.get("reason")))
    s = read_frames(run, "spans")
    c = read_frames(run, "counters")
    every = ctx.profile_every
    captured = {x for x in range(ctx.ref_steps) if x > 0 and (x + 1) % every == 0}
    t = c[(c["device"] == "train")] if len(c) else c
    if len(t) and not ctx.dry:  # on CPU the "captured" steps capture nothing
        st = t[t["metric"] == "step"][["ts_ns", "value"]].rename(columns={"value": "step"})
        tt = t[t["metric"] == "step_time_s"].merge(st, on="ts_ns")
        ctx.figure("ref_captured_step_time_s", median(tt[tt["step"].isin(captured)]["value"]), "s")
        ctx.figure("ref_uncaptured_step_time_s",
                   median(tt[~tt["step"].isin(captured) & (tt["step"] > 0)]["value"]), "s")
    skew, matched = _outside_ms(s[s["kind"] == "action"], s)
    ctx.figure("ref_action_step_skew_ms", skew, "ms")
    ctx.check("ref_actions_within_step", matched > 0 and skew <= 20.0,
              f"{matched} of {(s['kind'] == 'action').sum()} action spans "
              f"({'host clock' if ctx.dry else 'CUDA events'}) matched a ProfilerStep window; "
              f"the furthest lies {skew:.3f} ms outside it (limit 20)", skew, "ms")
    k = s[s["kind"] == "kernel"]
    kinfo = info.get("kernels", {})
    ctx.figure("ref_kernels", len(k), "kernels")
    ctx.figure("ref_comm_kernels", int((k["lane"] == "comm").sum()) if len(k) else 0, "kernels")
    if ctx.dry:
        why = "not applicable on CPU: no CUDA kernels (the same checks run on the fixture: kineto_*)"
        for name in ("ref_kernels_captured", "ref_kernels_have_sms_streams_devices",
                     "ref_kernels_within_step", "ref_sm_split_analysis"):
            ctx.check(name, None, why)
        return
    steps = set(k["step"].dropna().astype(int)) if len(k) else set()
    ctx.check("ref_kernels_captured", len(k) > 0 and steps <= captured and bool(steps),
              f"{len(k)} kernel spans in steps {sorted(steps)}, captured steps "
              f"{sorted(captured)}; lanes {({ln: v['count'] for ln, v in kinfo.items()})}",
              len(k), "kernels")
    _kernel_span_checks(ctx, "ref", s, info["topology"].get("sms_per_gpu"), 1,
                        "Kineto clock + rank offset vs the run clock")
    _sm_split_check(ctx, "ref", an)


def _kernel_span_checks(ctx: Ctx, prefix: str, spans: Any, sms: int | None, min_streams: int,
                        label: str) -> None:
    """Every stored kernel span has its SMs (1..SMs per GPU), stream and device, and lies in
    its step's ProfilerStep window (the clocks agree)."""
    k = spans[spans["kind"] == "kernel"] if len(spans) else spans
    streams = sorted(set(k["stream"].dropna().astype(int))) if len(k) else []
    ok = (len(k) > 0 and k["sms"].notna().all() and k["stream"].notna().all()
          and k["device"].notna().all() and sms is not None and k["sms"].min() >= 1
          and k["sms"].max() <= sms and len(streams) >= min_streams)
    ctx.check(f"{prefix}_kernels_have_sms_streams_devices", bool(ok),
              f"{label}: {len(k)} kernels, SMs {k['sms'].min() if len(k) else None}.."
              f"{k['sms'].max() if len(k) else None} of {sms}, streams {streams[:8]} "
              f"(at least {min_streams}), devices {sorted(set(k['device'].dropna().astype(int)))}")
    skew, matched = _outside_ms(k, spans)
    ctx.figure(f"{prefix}_kernel_step_skew_ms", skew, "ms")
    ctx.check(f"{prefix}_kernels_within_step", matched > 0 and skew <= 20.0,
              f"{label}: {matched} of {len(k)} kernels matched a ProfilerStep window; the "
              f"furthest lies {skew:.3f} ms outside it (limit 20)", skew, "ms")


def _sm_split_check(ctx: Ctx, prefix: str, an: dict[str, Any]) -> None:
    row: dict[str, Any] = next(iter(an.get("sm_seconds") or []), {})
    ctx.figure(f"{prefix}_compute_sm_s", row.get("compute_sm_s"), "SM*s")
    ctx.figure(f"{prefix}_comm_sm_s", row.get("comm_sm_s"), "SM*s")
    ctx.check(f"{prefix}_sm_split_analysis", (row.get("compute_sm_s") or 0) > 0,
              f"analyze sm_seconds: {row or 'no row'}", row.get("compute_sm_s"), "SM*s")


def _outside_ms(spans: Any, all_spans: Any) -> tuple[float, int]:
    """How far (ms) the worst of ``spans`` lies outside its step's ProfilerStep window (an
    annotation of ``all_spans``), and how many had a window (same rank and step)."""
    if not len(spans) or not len(all_spans):
        return math.nan, 0
    ann = all_spans[(all_spans["kind"] == "annotation")
                    & all_spans["name"].str.startswith("ProfilerStep#")]
    if not len(ann):
        return math.nan, 0
    win = ann.groupby(["rank", "step"]).agg(w0=("start_ns", "min"), w1=("end_ns", "max"))
    j = spans.dropna(subset=["step"]).astype({"step": "int64", "rank": "int64"}).merge(
        win.reset_index().astype({"step": "int64", "rank": "int64"}), on=["rank", "step"])
    if not len(j):
        return math.nan, 0
    out = ((j["w0"] - j["start_ns"]).clip(lower=0) + (j["end_ns"] - j["w1"]).clip(lower=0))
    return float(out.max()) / 1e6, len(j)


def step_kineto(ctx: Ctx) -> None:
    d = ctx.out / "kineto-trace"
    d.mkdir(exist_ok=True)
    r = ctx.worker("kineto", "kineto", "--device", "cpu" if ctx.dry else "cuda",
                   "--trace", str(d / "rank0.pt.trace.json"), timeout=120)
    ctx.facts["kineto"] = r
    raw = kineto_kernels(d / "rank0.pt.trace.json")
    ctx.check("kineto_trace_written", r["events"] > 0,
              f"{r['events']} events, {len(raw)} kernels, torch {r['torch']}", r["events"],
              "events")
    src = FIXTURE if ctx.dry else d / "rank0.pt.trace.json"
    _raw_kernel_check(ctx, kineto_kernels(src), "fixture " + FIXTURE.parent.name
                      + " (dry-run: no GPU)" if ctx.dry else "captured here")


def _raw_kernel_check(ctx: Ctx, kernels: list[dict[str, Any]], label: str) -> None:
    def has(e: dict[str, Any]) -> bool:
        a = e.get("args") or {}
        g = a.get("grid")
        return (isinstance(g, list) and len(g) == 3 and all(isinstance(x, int) and x >= 1
                                                            for x in g)
                and isinstance(a.get("stream"), int) and isinstance(a.get("device"), int))

    streams = {(e.get("args") or {}).get("stream") for e in kernels}
    ctx.figure("kineto_raw_kernels", len(kernels), "kernels")
    ctx.figure("kineto_streams", len(streams), "streams")
    ctx.check("kineto_raw_kernels_args", bool(kernels) and all(map(has, kernels))
              and len(streams) >= 2,
              f"{label}: {sum(map(has, kernels))} of {len(kernels)} kernels carry grid[3], "
              f"stream and device; {len(streams)} streams (2 used)", len(kernels), "kernels")


def step_kineto_import(ctx: Ctx) -> None:
    run = ctx.out / "kineto-run"
    summary = json.loads(ctx.dualscope("kineto_import", "import", "--out", str(run),
                                       str(ctx.out / "kineto-trace"), "--json"))
    ctx.check("kineto_import_ok", summary["spans"] > 0,
              f"{summary['spans']} spans, lanes {summary['lanes']}, cpu_only "
              f"{[f.get('cpu_only') for f in summary['files']]}", summary["spans"], "spans")
    want_sms: int | None
    if ctx.dry:  # the kernel checks on a real-looking GPU trace: the fixture
        run = ctx.out / "fixture-run"
        ctx.dualscope("fixture_import", "import", "--out", str(run), str(FIXTURE), "--json")
        raw, label = kineto_kernels(FIXTURE), f"fixture {FIXTURE.parent.name} (dry-run: no GPU)"
        want_sms, want_name = 132, "H100"
    else:
        raw, label = kineto_kernels(ctx.out / "kineto-trace" / "rank0.pt.trace.json"), "captured"
        env = ctx.facts.get("env", {}).get("cuda") or {}
        want_sms, want_name = env.get("sms"), str(env.get("name", "?"))
    ctx.facts["kernel_run"] = str(run)
    info = json.loads(ctx.dualscope("kineto_info", "info", "--json", str(run)))
    k = info.get("kernels", {})
    n = sum(v["count"] for v in k.values())
    ctx.figure("kineto_imported_kernels", n, "kernels")
    ctx.check("kineto_import_kernels_match", n == len(raw) > 0,
              f"{label}: {n} kernels imported of {len(raw)} in the trace; lanes "
              f"{({ln: v['count'] for ln, v in k.items()})}", n, "kernels")
    topo = info["topology"]
    _kernel_span_checks(ctx, "kineto", read_frames(run, "spans"), want_sms, 2, label)
    _sm_split_check(ctx, "kineto", json.loads(
        ctx.dualscope("kineto_analyze", "analyze", "--json", str(run), timeout=90)))
    ctx.check("kineto_topology", topo.get("sms_per_gpu") == want_sms
              and want_name.split()[-1] in str(topo.get("gpu_name")),
              f"{label}: manifest sms_per_gpu {topo.get('sms_per_gpu')} (want {want_sms}), "
              f"gpu_name {topo.get('gpu_name')!r} (want {want_name!r})")


def step_smsplit(ctx: Ctx) -> None:
    src = ctx.facts.get("kernel_run") if ctx.dry else ctx.facts.get("ref_run")
    if not ctx.dry and not ctx.figures.get("ref_kernels", {}).get("value"):
        src = ctx.facts.get("kernel_run")  # the reference run captured none: the GEMM trace
    if not src:
        raise StepFailed("no kernel run to read (reference and kineto_import both failed)")
    run = ctx.out / "smsplit-run"
    ctx.dualscope("smsplit_agent", "probe", "--out", str(run), "--kernels-from", src,
                  "--duration", "2", "--interval", "0.1", "--metrics-port", "-1",
                  timeout=60, nvml=True)
    c = read_frames(run, "counters")
    sm = c[c["device"] == "sm"] if len(c) else c
    comp = sm[sm["metric"] == "compute_sms"]["value"] if len(sm) else []
    comm = sm[sm["metric"] == "comm_sms"]["value"] if len(sm) else []
    sms = manifest(Path(src))["topology"].get("sms_per_gpu") or 0
    vals = [x for x in [*comp, *comm] if x == x]
    ctx.figure("smsplit_rows", len(comp) + len(comm), "rows")
    ctx.figure("smsplit_compute_sms_max", max(comp, default=math.nan), "SMs")
    ctx.figure("smsplit_comm_sms_max", max(comm, default=math.nan), "SMs")
    ctx.check("smsplit_rows", len(comp) > 0 and len(comm) > 0 and bool(vals)
              and min(vals) >= 0 and max(vals) <= sms and max(comp) > 0,
              f"--kernels-from {Path(src).name}: {len(comp)} compute_sms / {len(comm)} comm_sms "
              f"rows, max {max(comp, default=math.nan):.4g} / {max(comm, default=math.nan):.4g} "
              f"of {sms} SMs", len(comp) + len(comm), "rows")


#: in order of what matters most; timeouts (s) sized so that a hang in the reference run still
#: leaves time for the rest within the default budget (docs/gpu-validation.md, "Time budget")
STEPS = [
    Step("env", step_env, 60),
    Step("selftest", step_selftest, 45),
    Step("nvml_cost", step_nvml_cost, 45),
    Step("agent_load", step_agent_load, 0),  # --agent-seconds + 90, set in main
    Step("reference", step_reference, 150),
    Step("kineto", step_kineto, 60),
    Step("kineto_import", step_kineto_import, 60, needs=("kineto",)),
    Step("reference_sequential", step_reference_sequential, 100, when=_needs_sequential),
    Step("reference_checks", step_reference_checks, 60, needs=("reference|reference_sequential",)),
    Step("smsplit", step_smsplit, 30),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder (new, or empty)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU only: the NVML double, a CPU load, a CPU reference run, short")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no command runs past this many seconds from the start (default 420)")
    ap.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    ap.add_argument("--agent-seconds", type=float, default=0.0,
                    help="seconds of agent under load (default 60, dry-run 3)")
    ap.add_argument("--ref-steps", type=int, default=0,
                    help="reference run steps (default 6, dry-run 3)")
    ap.add_argument("--step-timeout", action="append", default=[], metavar="STEP=S",
                    help="override one step's timeout")
    ap.add_argument("--inject", action="append", default=[], metavar="STEP=fail|hang",
                    help="make a step fail or hang (tests the recording of failures)")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("--out DIR is required")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {args.out}: not empty; choose a new folder")
    names = [s.name for s in STEPS]
    only = [x for x in args.only.split(",") if x]
    for bad in [x for x in only if x not in names] + [
            kv.split("=")[0] for kv in args.inject + args.step_timeout
            if kv.split("=")[0] not in names]:
        ap.error(f"unknown step {bad!r}; steps: {', '.join(names)}")
    ctx = Ctx(args)
    timeouts = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.step_timeout)}
    steps = [s for s in STEPS if not only or s.name in only]
    timeouts.setdefault("agent_load", ctx.agent_s + 90)
    say(f"{'dry-run' if ctx.dry else 'GPU'} validation into {ctx.out}; budget "
         f"{args.budget_s:.0f} s; steps: {', '.join(s.name for s in steps)}")
    run_steps(ctx, steps, timeouts)
    s = summarise(ctx)
    print(write_reports(ctx, s), flush=True)
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
