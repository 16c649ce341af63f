"""The GPU validation kit (bench/gpu_validate.py) in its CPU dry-run: every step runs, every
check passes or says why it cannot apply on CPU, the figures carry units; and a step that
fails or hangs is recorded, costs only its own timeout, and makes the exit code non-zero.
The real GPU run is docs/gpu-validation.md's; CI has no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_validate.py"

STEPS = ["env", "selftest", "nvml_cost", "agent_load", "reference", "kineto", "kineto_import",
         "reference_sequential", "reference_checks", "smsplit"]
#: what a CPU cannot show; every other check must pass
NOT_APPLICABLE_ON_CPU = {"cuda_available", "kernel_capture_on", "ref_kernels_captured",
                         "ref_kernels_have_sms_streams_devices", "ref_kernels_within_step",
                         "ref_sm_split_analysis"}
CORE_CHECKS = {"selftest_nvml_available", "selftest_gpm_available", "selftest_nvml_fast_path",
               "nvml_calls_timed", "agent_cpu_at_10hz", "agent_sample_rate", "metrics_endpoint",
               "gpm_sm_util_positive", "power_sane", "sm_clock_sane", "nvlink_counters_present",
               "pcie_counters_present", "reference_finished", "reference_loss_falls",
               "reference_backend", "ref_actions_within_step", "kineto_raw_kernels_args",
               "kineto_import_kernels_match", "kineto_kernels_have_sms_streams_devices",
               "kineto_kernels_within_step", "kineto_sm_split_analysis", "smsplit_rows"}
FIGURES = {  # name -> unit
    "agent_cpu_pct": "% of one core", "agent_mean_sample_ms": "ms", "agent_sample_rate_hz": "Hz",
    "nvml_us.f138_data_tx_all": "us", "nvml_us.f197_pcie_tx": "us",
    "nvml_us.fields_all_c_pointer": "us", "nvml_us.power": "us", "nvml_us.gpm_sample_get": "us",
    "sm_util_ratio_median": "ratio", "power_w_median": "W", "sm_clock_hz_median": "Hz",
    "nvlink_tx_bytes_per_s_max": "B/s", "load_tflops": "TFLOP/s", "ref_step_time_s_median": "s",
    "kineto_imported_kernels": "kernels", "smsplit_rows": "rows",
}


def _run(out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.torch
def test_dry_run_runs_every_step_and_passes(tmp_path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "val"
    r = _run(out)
    s = json.loads((out / "summary.json").read_text())
    assert r.returncode == 0, (s["failed_steps"], s["failed_checks"], r.stdout[-3000:])
    assert s["mode"] == "dry-run" and s["passed"] and not s["failed_checks"]
    status = {st["name"]: st["status"] for st in s["steps"]}
    assert list(status) == STEPS
    assert status.pop("reference_sequential") == "not_needed"  # the CPU run is sequential
    assert set(status.values()) == {"ok"}, status
    checks = {c["name"]: c for c in s["checks"]}
    assert {n for n, c in checks.items() if c["status"] == "n/a"} == NOT_APPLICABLE_ON_CPU
    assert {c["status"] for n, c in checks.items() if n not in NOT_APPLICABLE_ON_CPU} == {"pass"}
    assert set(checks) >= CORE_CHECKS
    assert all(checks[n]["detail"] for n in NOT_APPLICABLE_ON_CPU)  # each says why
    assert "[NVML double]" in checks["gpm_sm_util_positive"]["detail"]  # never passed off as real
    for name, unit in FIGURES.items():
        f = s["figures"][name]
        assert f["unit"] == unit and isinstance(f["value"], float), (name, f)
    assert all(f["unit"] for f in s["figures"].values())
    assert s["figures"]["nvlink_tx_bytes_per_s_max"]["value"] == 0  # no traffic on one GPU
    # everything lies under --out, and the short table is printed last
    for p in ("results.md", "probe-run/manifest.json", "ref-run/manifest.json",
              "kineto-trace/rank0.pt.trace.json", "smsplit-run/manifest.json",
              "probe-metrics.txt", "logs/agent.err", "logs/ref-run.err"):
        assert (out / p).is_file(), p
    assert all(n in (out / "results.md").read_text() for n in checks)
    assert r.stdout.rstrip().splitlines()[-1].startswith("RESULT: PASS")


def test_failing_and_hanging_steps_are_recorded(tmp_path) -> None:
    out = tmp_path / "hang"
    t0 = time.monotonic()
    r = _run(out, "--only", "selftest,nvml_cost,kineto_import", "--inject", "selftest=hang",
             "--step-timeout", "selftest=3", timeout=120)
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stdout[-2000:]
    s = json.loads((out / "summary.json").read_text())
    steps = {st["name"]: st for st in s["steps"]}
    assert list(steps) == ["selftest", "nvml_cost", "kineto_import"]
    assert steps["selftest"]["status"] == "timeout" and "ran past 3 s" in steps["selftest"]["error"]
    assert steps["selftest"]["seconds"] < 20 and wall < 90  # the hang cost its own timeout only
    assert steps["nvml_cost"]["status"] == "ok"  # the next step ran
    assert steps["kineto_import"]["status"] == "skipped" and "needs kineto" in \
        steps["kineto_import"]["error"]
    assert not s["passed"] and s["failed_steps"] == ["selftest", "kineto_import"]
    assert "RESULT: FAIL" in r.stdout

    out = tmp_path / "fail"
    r = _run(out, "--only", "nvml_cost", "--inject", "nvml_cost=fail", timeout=60)
    s = json.loads((out / "summary.json").read_text())
    assert r.returncode == 1 and s["failed_steps"] == ["nvml_cost"]
    assert s["steps"][0]["status"] == "failed" and "exited 3" in s["steps"][0]["error"]
    assert (out / "logs" / "nvml_cost_injected.err").is_file()


def test_refuses_a_folder_that_is_not_empty(tmp_path) -> None:
    (tmp_path / "old.txt").write_text("x")
    r = _run(tmp_path, timeout=30)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_env_names_a_module_the_commands_cannot_import(tmp_path) -> None:
    """The first H200 run (2026-12-04) passed ``deps_importable`` with msgspec absent, then
    every CLI step failed on it: the check must import what the commands import."""
    shadow = tmp_path / "no-msgspec" / "msgspec"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'msgspec'\", name='msgspec')\n")
    out = tmp_path / "val"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run", "--only", "env"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    s = json.loads((out / "summary.json").read_text())
    check = {c["name"]: c for c in s["checks"]}["deps_importable"]
    assert r.returncode == 1 and check["status"] == "fail", (check, r.stdout[-2000:])
    assert "msgspec" in check["detail"] and "import" in check["detail"]
