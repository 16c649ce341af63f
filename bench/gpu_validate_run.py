"""The machinery of bench/gpu_validate.py: steps that run commands in their own sessions with
timeouts clipped to the step's and to the whole budget, the checks and figures they record,
the summary and the reports; and a reader of the documented run format (docs/trace-format.md)
that uses none of the project's code."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
WORKERS = Path(__file__).resolve().parent / "gpu_validate_workers.py"

class StepTimeout(Exception):
    pass


class StepFailed(Exception):
    pass


@dataclass
class Check:
    name: str
    step: str
    status: str  # pass | fail | n/a
    detail: str
    value: float | None = None
    unit: str = ""


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | timeout | skipped | not_needed
    seconds: float
    timeout_s: float
    error: str = ""
    logs: list[str] = field(default_factory=list)


@dataclass
class Step:
    name: str
    fn: Callable[[Ctx], None]
    timeout_s: float
    needs: tuple[str, ...] = ()
    when: Callable[[Ctx], str | None] | None = None  # returns why it is not needed, or None


class Ctx:
    """What the steps share: paths, mode, deadlines, and the checks and figures so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.out: Path = args.out.resolve()
        self.dry: bool = args.dry_run
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.step_deadline = self.deadline
        self.step = ""
        self.agent_s: float = args.agent_seconds or (3.0 if self.dry else 60.0)
        self.ref_steps: int = args.ref_steps or (3 if self.dry else 6)
        self.profile_every = 2
        self.inject: dict[str, str] = dict(kv.split("=", 1) for kv in args.inject)
        self.checks: list[Check] = []
        self.figures: dict[str, dict[str, Any]] = {}
        self.facts: dict[str, Any] = {}
        self.results: dict[str, StepResult] = {}
        self.logs: list[str] = []
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
                        PYTHONUNBUFFERED="1")
        self.nvml_env = dict(self.env)
        if self.dry:  # every process that reads NVML sees the double (tests/fakes/nvml.py)
            shim = self.out / "nvml-double"
            shim.mkdir(exist_ok=True)
            (shim / "sitecustomize.py").write_text(_SHIM.format(tests=str(ROOT / "tests")))
            self.nvml_env["PYTHONPATH"] = os.pathsep.join([str(shim), self.env["PYTHONPATH"]])
        self.src = " [NVML double]" if self.dry else ""

    # -- recording ----------------------------------------------------------------------------
    def check(self, name: str, ok: bool | None, detail: str, value: float | None = None,
              unit: str = "") -> bool:
        """``ok`` None: not applicable here (the detail says why)."""
        status = "n/a" if ok is None else ("pass" if ok else "fail")
        v = None if value is None or not math.isfinite(float(value)) else float(value)
        self.checks.append(Check(name, self.step, status, detail, v, unit))
        return bool(ok)

    def figure(self, name: str, value: float | None, unit: str) -> None:
        v = None if value is None or not math.isfinite(float(value)) else float(value)
        self.figures[name] = {"value": v, "unit": unit, "step": self.step}

    def ok(self, step: str) -> bool:
        r = self.results.get(step)
        return r is not None and r.status == "ok"

    # -- processes ----------------------------------------------------------------------------
    def left(self, want: float) -> float:
        t = min(want, self.step_deadline - time.monotonic())
        if t < 1.0:
            raise StepTimeout(f"no time left for {self.step} (step timeout or --budget-s)")
        return t

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Popen:
        log = self.out / "logs" / name
        self.logs += [f"logs/{name}.out", f"logs/{name}.err"]
        with open(f"{log}.cmd", "w") as f:
            f.write(" ".join(argv) + "\n")
        with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
            return Popen(argv, cwd=ROOT, env=env or self.env, start_new_session=True,
                         stdout=out, stderr=err)

    def run(self, name: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
            ok_rc: bool = True) -> str:
        """Run a command to completion (its own session; killed with its children at the
        timeout); returns its stdout. ``ok_rc``: a non-zero exit raises StepFailed."""
        p = self.spawn(name, argv, env)
        rc = p.finish(self.left(timeout))
        text = (self.out / "logs" / f"{name}.out").read_text(errors="replace")
        if rc != 0 and ok_rc:
            err = (self.out / "logs" / f"{name}.err").read_text(errors="replace").strip()
            raise StepFailed(f"{name} exited {rc}: {err.splitlines()[-1] if err else ''}")
        return text

    def dualscope(self, name: str, *args: str, timeout: float = 60.0, nvml: bool = False,
                  ok_rc: bool = True) -> str:
        return self.run(name, [PY, "-m", "dualscope", *args], timeout=timeout,
                        env=self.nvml_env if nvml else self.env, ok_rc=ok_rc)

    def worker(self, name: str, kind: str, *args: str, timeout: float, nvml: bool = False
               ) -> dict[str, Any]:
        res = self.out / "logs" / f"{name}.json"
        self.run(name, [PY, str(WORKERS), kind, "--result", str(res), *args],
                 timeout=timeout, env=self.nvml_env if nvml else self.env)
        return dict(json.loads(res.read_text()))


class Popen(subprocess.Popen):  # type: ignore[type-arg]
    def finish(self, timeout: float) -> int:
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise StepTimeout(f"{str(self.args)[:160]} ran past {timeout:.0f} s") from None

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM the whole session, SIGKILL it after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                return self.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return -9


_SHIM = '''"""Written by bench/gpu_validate.py --dry-run: a process with this folder on PYTHONPATH
imports the pynvml test double (tests/fakes/nvml.py: one H100, 18 NVLink links, no traffic, GPM,
following the wall clock) instead of the real library."""
import sys

sys.path.insert(0, {tests!r})
import pynvml as _real  # noqa: E402,F401  (the double reads its constants from the real module)
from fakes.nvml import FakeGpu, FakeNvml  # noqa: E402

sys.path.remove({tests!r})
sys.modules["pynvml"] = FakeNvml([FakeGpu(links=18)], real_time=True)  # type: ignore
'''


# -- the documented run format (docs/trace-format.md), read without the project's code -------
def read_frames(run: Path, what: str) -> Any:
    """Every row of ``RUN/<what>/*/`` (Arrow IPC segments, sealed or open, and Parquet parts)
    as one pandas DataFrame."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    frames = []
    for f in sorted((run / what).glob("*/*")):
        if f.name.endswith(".parquet"):
            frames.append(pq.read_table(f).to_pandas())
        elif ".arrows" in f.name:
            batches = []
            with contextlib.suppress(pa.ArrowInvalid, OSError), ipc.open_stream(f) as r:
                for b in r:  # an open segment ends at its last complete batch
                    batches.append(b)
            if batches:
                frames.append(pa.Table.from_batches(batches).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def manifest(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "manifest.json").read_text()))


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Any) -> float:
    v = [float(x) for x in values if x == x]
    return statistics.median(v) if v else math.nan


def run_steps(ctx: Ctx, steps: list[Step], timeouts: dict[str, float]) -> None:
    for st in steps:
        t0 = time.monotonic()
        ctx.step = st.name
        limit = timeouts.get(st.name, st.timeout_s)
        res = StepResult(st.name, "ok", 0.0, limit)
        n_logs = len(ctx.logs)
        missing = [n for n in st.needs if not any(ctx.ok(x) for x in n.split("|"))]
        why = st.when(ctx) if st.when else None
        if why:
            res.status, res.error = "not_needed", why
        elif missing:
            res.status, res.error = "skipped", f"needs {' and '.join(missing)}, which did not pass"
        elif time.monotonic() > ctx.deadline - 1:
            res.status, res.error = "skipped", "--budget-s spent before this step"
        else:
            ctx.step_deadline = min(t0 + limit, ctx.deadline)
            say(f"{st.name} ... (timeout {ctx.step_deadline - t0:.0f} s)")
            try:
                mode = ctx.inject.get(st.name)
                if mode == "fail":
                    ctx.run(f"{st.name}_injected", [PY, "-c", "raise SystemExit(3)"], timeout=30)
                elif mode == "hang":
                    ctx.run(f"{st.name}_injected", [PY, "-c", "import time; time.sleep(3600)"],
                            timeout=3600)
                st.fn(ctx)
            except StepTimeout as e:
                res.status, res.error = "timeout", str(e)
            except Exception as e:  # a failing step is recorded; the next one runs
                res.status, res.error = "failed", f"{type(e).__name__}: {e}"
        res.seconds = time.monotonic() - t0
        res.logs = ctx.logs[n_logs:]
        ctx.results[st.name] = res
        if res.status != "ok":
            say(f"{st.name}: {res.status.upper()} {res.error}")
        else:
            say(f"{st.name}: ok in {res.seconds:.1f} s")


def say(msg: str) -> None:
    print(f"[gpu_validate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarise(ctx: Ctx) -> dict[str, Any]:
    bad_steps = [r.name for r in ctx.results.values() if r.status not in ("ok", "not_needed")]
    bad_checks = [c.name for c in ctx.checks if c.status == "fail"]
    env = ctx.facts.get("env", {})
    return {
        "mode": "dry-run" if ctx.dry else "gpu",
        "passed": not bad_steps and not bad_checks,
        "failed_steps": bad_steps,
        "failed_checks": bad_checks,
        "wall_s": time.monotonic() - ctx.start,
        "host": socket.gethostname(),
        "device": (env.get("cuda") or {}).get("name") or ("NVML double (dry-run)" if ctx.dry
                                                           else None),
        "nvidia_smi": ctx.facts.get("nvidia_smi"),
        "nvml": {k: v for k, v in ctx.facts.get("nvml", {}).items() if k != "calls"},
        "env": env,
        "steps": [asdict(r) for r in ctx.results.values()],
        "checks": [asdict(c) for c in ctx.checks],
        "figures": ctx.figures,
    }


def _fmt(v: float | None, unit: str) -> str:
    return "-" if v is None else f"{v:.4g} {unit}".strip()


def write_reports(ctx: Ctx, s: dict[str, Any]) -> str:
    (ctx.out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    md = [f"Device: {s['device']} ({s['mode']}, {s['host']}, {time.strftime('%Y-%m-%d')}); "
          f"wall {s['wall_s']:.0f} s; result **{'PASS' if s['passed'] else 'FAIL'}**", "",
          "| step | check | result | value | detail |", "|---|---|---|---|---|"]
    for c in ctx.checks:
        detail = c.detail.replace("|", "/")
        md.append(f"| {c.step} | {c.name} | {c.status} | {_fmt(c.value, c.unit)} | {detail} |")
    md += ["", "| figure | value |", "|---|---|"]
    md += [f"| {k} | {_fmt(v['value'], v['unit'])} |" for k, v in sorted(ctx.figures.items())]
    (ctx.out / "results.md").write_text("\n".join(md) + "\n")
    lines = [f"{'step':22} {'status':10} {'s':>6}  checks"]
    for r in ctx.results.values():
        mine = [c for c in ctx.checks if c.step == r.name]
        counts = {k: sum(c.status == k for c in mine) for k in ("pass", "fail", "n/a")}
        lines.append(f"{r.name:22} {r.status:10} {r.seconds:6.1f}  "
                     + " ".join(f"{v} {k}" for k, v in counts.items() if v))
    lines.append("")
    lines.append(f"{'check':40} {'result':6} value")
    for c in ctx.checks:
        lines.append(f"{c.name:40} {c.status.upper():6} {_fmt(c.value, c.unit)}")
    n = {k: sum(c.status == k for c in ctx.checks) for k in ("pass", "fail", "n/a")}
    lines.append(f"\nRESULT: {'PASS' if s['passed'] else 'FAIL'} ({n['pass']} pass, "
                 f"{n['n/a']} n/a, {n['fail']} fail; steps not ok: "
                 f"{s['failed_steps'] or 'none'}) in {s['wall_s']:.0f} s -> {ctx.out}/summary.json")
    return "\n".join(lines)
