"""Import benchmark: ``dualscope import`` against HTA's ``TraceAnalysis`` on one trace set.

    python bench/bench_import.py --traces bench/data/kineto-200mb --hta --jobs 1,2 --repeat 3
    python bench/bench_import.py --traces bench/data/kineto-2048 --scaling 256,512,1024,2048

Each tool runs in its own child process (dualscope: ``python -m dualscope import DIR --out
TMP``; HTA: ``TraceAnalysis(trace_dir=DIR)``, which parses every rank and aligns them), so its
time and memory are measured apart from this driver and from each other:

* wall time (``time.perf_counter`` around the child, its end seen the moment it exits
  through a pidfd, not at the next memory sample), CPU time (user + sys of the child and its
  waited-for descendants, from ``os.wait4``);
* peak memory of the child's process tree, polled every ``--poll-s``: the sum of RSS and the
  sum of PSS (proportional set size, which splits pages shared by HTA's forked parser workers
  instead of counting them once per process); plus ``ru_maxrss`` from ``os.wait4``, the exact
  peak of the largest single process. The headline memory figure is
  ``peak_mem_bytes = max(peak PSS sum, ru_maxrss)`` so a peak shorter than the poll interval
  is not missed. Linux keeps ``ru_maxrss`` across fork + exec, so a child starts with this
  driver's peak: the driver therefore never loads a trace itself (event counting and run
  checks run in helper processes) and records its own RSS as ``launcher_rss_bytes``;
* events/s = ``traceEvents`` in the set (counted once, before the runs) / wall time.

The trace files are read once before the runs (to count events), so both tools start with
the files in the page cache. A child whose tree passes ``--mem-limit-gb`` is killed and
reported as such, with the size of the trace set it failed on.

``--jobs 1,2`` runs ``dualscope import --jobs N`` for each N (alternating with HTA in every
repeat). The JSON's ``summary`` holds, per N: ``speedup_wall`` and ``speedup_cpu`` (HTA's
median wall / CPU seconds over dualscope's), ``mem_ratio`` (dualscope's peak memory over
HTA's, both ``peak_mem_bytes``), ``mb_per_s_per_core`` (trace MB per CPU second of
dualscope's process tree: the throughput of one core, whatever the load) and
``mb_per_s_wall_per_job`` (MB per wall second per worker), each with its target and whether
it is met.

``--scaling 256,512,1024,2048`` imports the first N files of the set (symlinked into a
temporary folder) for each N with ``--jobs``'s first value and reports wall and CPU time per
file and per MB: flat when the cost per file does not grow with the number of files.

Prints a table and writes the result as JSON (``--json-out``, default
``bench/results/import-<UTC time>.json``).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent

HTA_SNIPPET = """
import sys, time, json
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
analysis = TraceAnalysis(trace_dir=sys.argv[1])
traces = analysis.t.traces
print(json.dumps({"ranks": len(traces), "rows": int(sum(len(df) for df in traces.values())),
                  "seconds_in_child": time.perf_counter() - t0}))
"""


def trace_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.name.endswith((".json", ".json.gz")))


COUNT_SNIPPET = """
import gzip, json, sys
import orjson
out = {}
for name in sys.argv[1:]:
    data = open(name, "rb").read()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    out[name] = len(orjson.loads(data).get("traceEvents", []))
    del data
print(json.dumps(out))
"""

SPANS_SNIPPET = """
import json, sys
from profiler.store import RunReader
r = RunReader(sys.argv[1])
print(json.dumps({"ranks": len(r.ranks()),
                  "spans": sum(r.span_table([k], columns=["rank"]).num_rows for k in r.ranks())}))
"""


def _child_json(cmd: list[str], env: dict[str, str] | None = None) -> Any:
    """Run a helper in a child process and parse the JSON it prints. Helpers run apart so
    this driver stays small: Linux carries a process's peak RSS (``ru_maxrss``) across
    fork + exec, so a big driver would inflate the children's ``ru_maxrss``."""
    res = subprocess.run(cmd, env=env, capture_output=True, check=True)
    return orjson.loads(res.stdout.strip().splitlines()[-1])


def count_events(files: list[Path]) -> dict[str, Any]:
    """Trace events per file, counted in a child process (which also warms the page cache)."""
    per_file = _child_json([sys.executable, "-c", COUNT_SNIPPET, *map(str, files)])
    return {"events": int(sum(per_file.values())), "per_file": per_file}


def _tree_memory(proc: psutil.Process, use_pss: bool) -> tuple[int, int, int]:
    """(sum RSS, sum PSS, process count) of ``proc`` and its descendants."""
    rss = pss = n = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        try:
            if use_pss:
                mi = p.memory_full_info()
                rss += mi.rss
                pss += mi.pss
            else:
                rss += p.memory_info().rss
            n += 1
        except psutil.Error:
            continue
    return rss, (pss if use_pss else rss), n


def measure(cmd: list[str], *, env: dict[str, str], poll_s: float, mem_limit: int,
            timeout_s: float, log: Path) -> dict[str, Any]:
    """Run ``cmd``; wall / CPU time, peak tree RSS / PSS, ru_maxrss, exit status, stdout."""
    use_pss = True
    try:
        psutil.Process().memory_full_info()
    except (psutil.AccessDenied, AttributeError):
        use_pss = False
    load_before = os.getloadavg()
    launcher_rss = psutil.Process().memory_info().rss
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                                 start_new_session=True)
        proc = psutil.Process(child.pid)
        peak_rss = peak_pss = peak_procs = 0
        status = "ok"
        rusage = None
        wait_status = 0
        assert child.stdout is not None
        os.set_blocking(child.stdout.fileno(), False)
        out = bytearray()
        # the wait between memory samples ends the moment the child exits (a pidfd turns
        # readable), so the wall time is the child's, not rounded up to the next sample
        try:
            exited: int | None = os.pidfd_open(child.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: sleep, wall up to poll_s late
            exited = None
        while True:
            pid, wait_status, rusage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            rss, pss, n = _tree_memory(proc, use_pss)
            peak_rss, peak_pss, peak_procs = max(peak_rss, rss), max(peak_pss, pss), max(
                peak_procs, n)
            chunk = child.stdout.read()
            if chunk:
                out += chunk
            if rss > mem_limit and status == "ok":
                status = f"killed: process tree passed --mem-limit-gb ({rss / 1e9:.1f} GB)"
                os.killpg(child.pid, signal.SIGKILL)
            elif time.perf_counter() - t0 > timeout_s and status == "ok":
                status = f"killed: ran past --timeout-s {timeout_s:.0f}"
                os.killpg(child.pid, signal.SIGKILL)
            if exited is None:
                time.sleep(poll_s)
            else:
                select.select([exited], [], [], poll_s)
        wall = time.perf_counter() - t0
        if exited is not None:
            os.close(exited)
        child.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped by wait4
        out += child.stdout.read() or b""
        child.stdout.close()
    if status == "ok" and child.returncode != 0:
        status = f"failed: exit {child.returncode} (see {log})"
    maxrss = rusage.ru_maxrss * 1024 if rusage else 0  # KiB on Linux
    return {
        "cmd": cmd,
        "status": status,
        "exit_code": child.returncode,
        "wall_s": wall,
        "cpu_s": (rusage.ru_utime + rusage.ru_stime) if rusage else None,
        "peak_rss_tree_bytes": peak_rss,
        "peak_pss_tree_bytes": peak_pss if use_pss else None,
        "max_rss_single_process_bytes": maxrss,
        "peak_mem_bytes": max(peak_pss, maxrss),
        "peak_processes": peak_procs,
        "launcher_rss_bytes": launcher_rss,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "stdout": out.decode(errors="replace"),
        "log": str(log),
    }


def precompile() -> list[str]:
    """Compile dualscope's own modules to bytecode before timing, as ``pip install`` does for
    an installed package (and HTA's already is): with ``PYTHONDONTWRITEBYTECODE`` set, as on
    the development VM, an editable checkout would otherwise compile ~40 modules in every
    timed run (~0.1 s of CPU). The ``__pycache__`` folders it writes are git-ignored."""
    done = []
    for pkg in ("dualscope", "profiler"):
        if compileall.compile_dir(str(ROOT / pkg), quiet=1):
            done.append(pkg)
    return done


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for mod in ("pandas", "pyarrow", "orjson", "numpy", "hta"):
        try:
            from importlib.metadata import version

            versions[mod] = version("HolisticTraceAnalysis" if mod == "hta" else mod)
        except Exception:  # a missing package is reported as None
            versions[mod] = None
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": versions,
    }


def _gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e9:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", required=True, type=Path, help="directory of Kineto traces")
    ap.add_argument("--hta", action="store_true", help="also run HTA TraceAnalysis")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--poll-s", type=float, default=0.1, help="memory poll interval")
    ap.add_argument("--mem-limit-gb", type=float,
                    default=round(psutil.virtual_memory().total * 0.85 / 1e9, 1),
                    help="kill a child whose process tree RSS passes this (default 85%% RAM)")
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--import-arg", action="append", default=[],
                    help="extra argument for 'dualscope import' (repeatable)")
    ap.add_argument("--import-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for 'dualscope import' only (repeatable), for "
                         "what-if runs such as ARROW_DEFAULT_MEMORY_POOL=system")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per tool, alternating; median time, largest peak memory")
    ap.add_argument("--keep-run", type=Path, default=None,
                    help="keep the imported run at this path (default: deleted)")
    ap.add_argument("--jobs", default="1",
                    help="comma-separated values of 'dualscope import --jobs' to run, e.g. 1,2")
    ap.add_argument("--scaling", default=None, metavar="N,N,...",
                    help="import the first N files for each N (no HTA) and report the cost "
                         "per file")
    args = ap.parse_args(argv)
    try:
        args.jobs = [int(j) for j in str(args.jobs).split(",") if j]
    except ValueError:
        ap.error(f"--jobs {args.jobs!r}: want comma-separated integers")
    if not args.jobs or min(args.jobs) < 1:
        ap.error("--jobs: at least one value, each >= 1")

    files = trace_files(args.traces)
    if not files:
        ap.error(f"--traces {args.traces}: no *.json or *.json.gz files")
    compiled = precompile()
    if args.scaling:
        return scaling(args, files)
    size = sum(p.stat().st_size for p in files)
    print(f"trace set: {len(files)} files, {size / 1e6:.1f} MB in {args.traces}", file=sys.stderr)
    counted = count_events(files)  # also warms the page cache for both tools
    events = counted["events"]
    print(f"trace events: {events}", file=sys.stderr)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_out = args.json_out or ROOT / "bench" / "results" / f"import-{stamp}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    mem_limit = int(args.mem_limit_gb * 1e9)
    ds_env = dict(env)
    for item in args.import_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--import-env {item!r}: expected KEY=VALUE")
        ds_env[key] = value
    result: dict[str, Any] = {
        "benchmark": "import", "utc": stamp, "machine": machine(),
        "traces": {"dir": str(args.traces), "files": len(files), "bytes": size,
                   "events": events},
        "targets": TARGETS,
        "import_args": args.import_arg, "import_env": args.import_env, "jobs": args.jobs,
        "bytecode_precompiled": compiled,
    }

    runs: dict[str, list[dict[str, Any]]] = {tool(j): [] for j in args.jobs}
    runs["hta"] = []
    for i in range(args.repeat):
        log = json_out.parent / f"{json_out.stem}.run{i + 1}"
        for j in args.jobs:
            print(f"run {i + 1}/{args.repeat}: dualscope import --jobs {j} ...", file=sys.stderr)
            runs[tool(j)].append(run_dualscope(args, ds_env, mem_limit, Path(f"{log}.j{j}"),
                                               j))
        if args.hta:
            print(f"run {i + 1}/{args.repeat}: HTA TraceAnalysis ...", file=sys.stderr)
            runs["hta"].append(measure(
                [sys.executable, "-c", HTA_SNIPPET, str(args.traces)], env=env,
                poll_s=args.poll_s, mem_limit=mem_limit, timeout_s=args.timeout_s,
                log=Path(f"{log}.hta.log")))
    for name, tool_runs in runs.items():
        if not tool_runs:
            continue
        for m in tool_runs:
            if name == "hta" and m["status"] == "ok":
                with contextlib.suppress(orjson.JSONDecodeError, IndexError):
                    m.update(orjson.loads(m["stdout"].strip().splitlines()[-1]))
            m["stdout_tail"] = m.pop("stdout")[-2000:]
            _add_rates(m, events, size)
        result[name] = summarize(tool_runs)
        result[name]["runs"] = tool_runs
    result["summary"] = {str(j): summary_of(result[tool(j)], result.get("hta"), size, j)
                         for j in args.jobs}
    json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    _print_table(result)
    print(f"result: {json_out}", file=sys.stderr)
    return 0 if all(result[tool(j)]["status"] == "ok" for j in args.jobs) else 1


#: issue 14's targets on the 240 MB set
TARGETS = {"speedup_wall": 10.0, "speedup_cpu": 8.0, "mem_ratio": 0.25,
           "mb_per_s_per_core": 80.0}


def tool(jobs: int) -> str:
    return "dualscope" if jobs == 1 else f"dualscope_jobs{jobs}"


def summary_of(ds: dict[str, Any], hta: dict[str, Any] | None, size: int,
               jobs: int) -> dict[str, Any]:
    """The headline figures of one ``--jobs`` value, with the targets and whether each is met
    (None: not measured)."""
    out: dict[str, Any] = {"jobs": jobs, "status": ds["status"]}
    if ds["status"] != "ok":
        return out
    mb = size / 1e6
    out["mb_per_s_per_core"] = mb / ds["cpu_s"] if ds["cpu_s"] else None
    out["mb_per_s_wall_per_job"] = mb / ds["wall_s"] / jobs
    if hta is not None and hta.get("status") == "ok":
        out["speedup_wall"] = hta["wall_s"] / ds["wall_s"]
        out["speedup_cpu"] = hta["cpu_s"] / ds["cpu_s"] if ds["cpu_s"] else None
        out["mem_ratio"] = ds["peak_mem_bytes"] / hta["peak_mem_bytes"]
        out["mem_ratio_rss_tree"] = ds["peak_rss_tree_bytes"] / hta["peak_rss_tree_bytes"]
    met = {}
    for key, target in TARGETS.items():
        value = out.get(key)
        met[key] = None if value is None else (value <= target if key == "mem_ratio"
                                               else value >= target)
    out["targets"] = TARGETS
    out["met"] = met
    return out


def scaling(args: argparse.Namespace, files: list[Path]) -> int:
    """Import the first N files for each N of ``--scaling``: cost per file as files grow."""
    counts = sorted({int(n) for n in args.scaling.split(",") if n})
    if not counts or counts[-1] > len(files) or counts[0] < 1:
        print(f"--scaling {args.scaling}: each N in 1..{len(files)}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_out = args.json_out or ROOT / "bench" / "results" / f"import-scaling-{stamp}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    jobs = args.jobs[0]
    rows = []
    for n in counts:
        subset = files[:n]
        size = sum(p.stat().st_size for p in subset)
        best: dict[str, Any] | None = None
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
                d = Path(tmp) / "traces"
                d.mkdir()
                for p in subset:
                    (d / p.name).symlink_to(p.resolve())
                run = Path(tmp) / "run"
                cmd = [sys.executable, "-m", "dualscope", "import", str(d), "--out", str(run),
                       "--jobs", str(jobs), "--json"]
                print(f"scaling: {n} files, run {i + 1}/{args.repeat} ...", file=sys.stderr)
                m = measure(cmd, env=env, poll_s=args.poll_s,
                            mem_limit=int(args.mem_limit_gb * 1e9), timeout_s=args.timeout_s,
                            log=json_out.with_suffix(f".n{n}.log"))
            m.pop("stdout", None)
            if m["status"] != "ok":
                best = m
                break
            if best is None or m["cpu_s"] < best["cpu_s"]:
                best = m
        assert best is not None
        rows.append({"files": n, "bytes": size, "jobs": jobs, "status": best["status"],
                     "wall_s": best["wall_s"], "cpu_s": best["cpu_s"],
                     "wall_ms_per_file": 1e3 * best["wall_s"] / n,
                     "cpu_ms_per_file": 1e3 * (best["cpu_s"] or 0) / n,
                     "cpu_s_per_mb": (best["cpu_s"] or 0) / (size / 1e6),
                     "peak_mem_bytes": best["peak_mem_bytes"],
                     "loadavg": [best["loadavg_before"], best["loadavg_after"]]})
    result = {"benchmark": "import-scaling", "utc": stamp, "machine": machine(),
              "traces": str(args.traces), "repeat": args.repeat, "rows": rows,
              "note": "each row: the run with the least CPU time of --repeat runs"}
    json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"{'files':>6} {'MB':>8} {'wall s':>8} {'CPU s':>8} {'ms/file':>8} "
          f"{'CPU ms/file':>11} {'peak GB':>8}")
    for r in rows:
        print(f"{r['files']:>6} {r['bytes'] / 1e6:>8.1f} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['wall_ms_per_file']:>8.2f} {r['cpu_ms_per_file']:>11.2f} "
              f"{_gb(r['peak_mem_bytes']):>8}")
    print(f"result: {json_out}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def run_dualscope(args: argparse.Namespace, env: dict[str, str], mem_limit: int,
                  log: Path, jobs: int = 1) -> dict[str, Any]:
    """One ``dualscope import --jobs N`` into a temporary run, then count what it wrote."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        run_dir = tmp / "run"
        cmd = [sys.executable, "-m", "dualscope", "import", str(args.traces), "--out",
               str(run_dir), "--json", "--jobs", str(jobs), *args.import_arg]
        m = measure(cmd, env=env, poll_s=args.poll_s, mem_limit=mem_limit,
                    timeout_s=args.timeout_s, log=Path(f"{log}.dualscope.log"))
        if m["status"] == "ok":
            m.update(_child_json([sys.executable, "-c", SPANS_SNIPPET, str(run_dir)], env=env))
            m["run_bytes"] = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
            with contextlib.suppress(orjson.JSONDecodeError):
                m["summary_spans"] = orjson.loads(m["stdout"]).get("spans")
            if args.keep_run and not args.keep_run.exists():
                shutil.move(str(run_dir), args.keep_run)
        return m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall / CPU time and the largest peak memory over the runs (all must be ok)."""
    ok = [m for m in runs if m["status"] == "ok"]
    if len(ok) < len(runs):
        bad = next(m for m in runs if m["status"] != "ok")
        return {k: v for k, v in bad.items() if k != "runs"}
    out = dict(sorted(ok, key=lambda m: m["wall_s"])[len(ok) // 2])  # the median run
    for key in ("peak_mem_bytes", "peak_pss_tree_bytes", "peak_rss_tree_bytes",
                "max_rss_single_process_bytes", "peak_processes"):
        vals = [m[key] for m in ok if m.get(key) is not None]
        out[key] = max(vals) if vals else None
    out["wall_s_all"] = [m["wall_s"] for m in ok]
    out["cpu_s_all"] = [m["cpu_s"] for m in ok]
    out["cpu_s"] = float(statistics.median(m["cpu_s"] for m in ok))
    out.pop("stdout_tail", None)
    return out


def _add_rates(m: dict[str, Any], events: int, size: int) -> None:
    if m["status"] == "ok" and m["wall_s"] > 0:
        m["events_per_s"] = events / m["wall_s"]
        m["mb_per_s"] = size / 1e6 / m["wall_s"]


def _print_table(result: dict[str, Any]) -> None:
    tools = [t for t in result if t.startswith("dualscope") or t == "hta"]
    tools = [t for t in tools if isinstance(result[t], dict) and "status" in result[t]]
    head = f"{'':28}" + "".join(f"{t:>20}" for t in tools)
    lines = [head]

    def row(label: str, fmt: Any) -> None:
        lines.append(f"{label:28}" + "".join(f"{fmt(result[t]):>20}" for t in tools))

    row("status", lambda m: m["status"].split(":")[0])
    row("wall s (median)", lambda m: f"{m['wall_s']:.2f}")
    row("cpu s (median)", lambda m: "-" if m["cpu_s"] is None else f"{m['cpu_s']:.2f}")
    row("events/s", lambda m: f"{m.get('events_per_s', 0):,.0f}")
    row("MB/s (JSON)", lambda m: f"{m.get('mb_per_s', 0):.1f}")
    row("peak mem GB (max of runs)", lambda m: _gb(m["peak_mem_bytes"]))
    row("peak PSS sum GB", lambda m: _gb(m["peak_pss_tree_bytes"]))
    row("peak RSS sum GB", lambda m: _gb(m["peak_rss_tree_bytes"]))
    row("max single RSS GB", lambda m: _gb(m["max_rss_single_process_bytes"]))
    row("processes (peak)", lambda m: str(m["peak_processes"]))
    t = result["traces"]
    print(f"\nimport benchmark: {t['files']} files, {t['bytes'] / 1e6:.1f} MB, "
          f"{t['events']:,} events")
    print("\n".join(lines))
    for jobs, s in result.get("summary", {}).items():
        if s.get("status") != "ok":
            continue
        parts = []
        for key, target in TARGETS.items():
            v = s.get(key)
            if v is None:
                continue
            op = "<=" if key == "mem_ratio" else ">="
            parts.append(f"{key} {v:.2f} ({op} {target:g}: {'MET' if s['met'][key] else 'NOT MET'})")
        print(f"--jobs {jobs}: " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
