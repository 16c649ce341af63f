"""deploy/prometheus and deploy/grafana with the real tools and against the agent's series:
promtool checks the configs and rules and runs the rule unit tests (one per alert, firing on
the bad series and quiet on the good ones); every series a rule or a board panel reads is one
the agent serves (or, for the step rules, one listed as waiting); every threshold is
documented; the board's links point at dashboard pages; the systemd unit and the DaemonSet
call the agent with options it has, with the secure defaults docs/ops.md promises."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import ROOT
from prometheus_deploy import (
    BOARD,
    BUILTIN,
    PROM_DIR,
    RULE_FILES,
    RULES_DIR,
    STEP_SERIES,
    UNIT_TESTS,
    agent_names,
    board,
    board_links,
    board_targets,
    dcgm_names,
    from_step_series,
    load_rules,
    recorded,
    require_prometheus,
    series_names,
    step_names,
)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_prometheus("promtool")["promtool"]


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{out}"
    return out


# -- promtool ------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-static.yml"])
def test_promtool_check_config(promtool: str, config: str) -> None:
    out = _run([promtool, "check", "config", config])
    assert f"SUCCESS: {config} is valid" in out and out.count("SUCCESS: ") >= 4, out


def test_promtool_check_rules(promtool: str) -> None:
    out = _run([promtool, "check", "rules", *(f"rules/{f}" for f in RULE_FILES)])
    assert out.count("SUCCESS") == len(RULE_FILES), out


def test_promtool_rule_unit_tests(promtool: str) -> None:
    out = _run([promtool, "test", "rules", *(str(p.relative_to(PROM_DIR)) for p in UNIT_TESTS)])
    assert "FAILED" not in out and out.count("SUCCESS") == len(UNIT_TESTS), out


def test_every_alert_has_a_unit_test_that_fires_and_one_series_it_stays_quiet_on() -> None:
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    fired: dict[str, int] = {}
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            inputs = [_labels(s["series"]) for s in case.get("input_series", [])]
            for check in case.get("alert_rule_test", []):
                expected = [a["exp_labels"] for a in check.get("exp_alerts", [])]
                if not expected:
                    continue
                # the good series: an input whose labels match no expected alert
                quiet = [lab for lab in inputs
                         if not any(lab.items() <= {k: str(v) for k, v in e.items()}.items()
                                    for e in expected)]
                assert quiet, f"{path.name}: {check['alertname']} has no series it must ignore"
                fired[check["alertname"]] = fired.get(check["alertname"], 0) + 1
    assert alerts - fired.keys() == set(), f"alerts without a firing unit test: {alerts - fired.keys()}"
    assert fired.keys() <= alerts


def _labels(selector: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', selector))


def test_alerts_have_for_severity_and_summary() -> None:
    for rule in load_rules():
        if "alert" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- the series the rules and the board read -----------------------------------------------------
def test_rules_read_only_served_series() -> None:
    known = agent_names() | step_names() | set(recorded()) | BUILTIN
    for rule in load_rules():
        unknown = series_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads {unknown}"
    # the step series come from the step exporter only, and only the step rules read them
    assert step_names() >= STEP_SERIES and not step_names() & agent_names()
    steps = from_step_series()
    assert {r["group"] for r in load_rules() if r.get("record") in steps} == {"dualscope-steps"}


def test_declared_comm_sm_cap_the_agent_serves() -> None:
    from probes.exporter import declared_comm_sms

    assert declared_comm_sms({}) is None
    assert declared_comm_sms({"NCCL_MIN_CTAS": 4}) is None  # a floor, not a cap
    assert declared_comm_sms({"NCCL_MAX_CTAS": 16, "NCCL_MAX_NCHANNELS": 8}) == \
        (8.0, "NCCL_MAX_NCHANNELS")  # an NCCL kernel takes one SM per channel
    assert declared_comm_sms({"NCCL_MAX_CTAS": 16, "deep_ep.Buffer.num_sms": 20}) == \
        (36.0, "NCCL_MAX_CTAS+deep_ep.Buffer.num_sms")
    assert declared_comm_sms({"NCCL_MAX_CTAS": "lots"}) is None  # not an integer: not a cap


def test_series_names_reads_promql() -> None:
    expr = ('sum by (run) (rate(dualscope_ib_transmit_bytes_total{hca=~"mlx5_[0-9]+"}[1m])) '
            '/ on (run) group_left () run:x:y > bool 1e9 and up == 0 or vector(0.5)')
    assert series_names(expr) == {"dualscope_ib_transmit_bytes_total", "run:x:y", "up"}


def test_board_reads_only_served_series() -> None:
    usable = agent_names() | step_names() | set(recorded())
    dcgm = dcgm_names()
    assert {"DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_NVLINK_TX_BYTES"} <= dcgm
    for title, expr in board_targets():
        unknown = series_names(expr) - usable - dcgm - BUILTIN
        assert not unknown, f"panel {title!r} reads {unknown}"


def test_board_is_templated_by_job_node_gpu_and_joins_dcgm_on_uuid() -> None:
    b = board()
    variables = {v["name"]: v for v in b["templating"]["list"]}
    assert {"datasource", "run", "node", "gpu", "dashboard_url"} <= variables.keys()
    assert "dualscope_probe_samples_total" in variables["run"]["query"]["query"]
    assert ", Hostname)" in variables["node"]["query"]["query"]
    assert ", gpu)" in variables["gpu"]["query"]["query"]
    ids = [p["id"] for p in b["panels"]]
    assert len(ids) == len(set(ids)) and b["uid"] == "dualscope-probe"
    targets = board_targets()
    assert all('run=~"$run"' in e for _, e in targets if "dualscope" in e)
    dcgm = [e for _, e in targets if "DCGM_FI_" in e]
    assert dcgm and all("on (UUID)" in e for e in dcgm)
    for p in b["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_board_links_open_dashboard_pages_with_run_and_node() -> None:
    from dashboard.layout import PAGES

    pages = {path for path, _ in PAGES}
    links = board_links()
    assert len(links) >= 4
    for url in links:
        assert url.startswith("${dashboard_url}/"), url
        parts = urlsplit(url.replace("${dashboard_url}", "http://dualscope"))
        assert parts.path in pages, url
        assert "run=${run:percentencode}" in parts.query, url
    assert any("node=${node:percentencode}" in u or "node=${__field.labels.Hostname" in u
               for u in links)


# -- documented ----------------------------------------------------------------------------------
def test_every_threshold_is_documented_with_its_default() -> None:
    ops = (ROOT / "docs" / "ops.md").read_text()
    defaults = [r for r in load_rules("dualscope-thresholds.yml")
                if r["record"].startswith("dualscope_threshold:")]
    assert len(defaults) >= 7
    for rule in defaults:
        name = rule["record"].split(":", 1)[1]
        value = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"]).group(1)  # type: ignore[union-attr]
        assert re.search(rf"`{name}`\s*\|\s*`?{re.escape(value)}`?", ops), \
            f"docs/ops.md does not give threshold {name} = {value}"
    for alert in (r["alert"] for r in load_rules() if "alert" in r):
        assert alert in ops, f"docs/ops.md does not describe {alert}"
    for series in step_names():
        assert series in ops
    assert str(BOARD.relative_to(ROOT)) in ops and str(RULES_DIR.relative_to(ROOT)) in ops


# -- the agent's deployment files ----------------------------------------------------------------
def _probe_options() -> set[str]:
    from probes.commands import command

    return {opt for p in command.params for opt in p.opts}


def test_systemd_unit_and_daemonset_call_the_agent_with_options_it_has() -> None:
    options = _probe_options()
    unit = (ROOT / "deploy" / "systemd" / "dualscope-probe.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    used = set(re.findall(r"(--[a-z-]+)", exec_start))
    env = (ROOT / "deploy" / "systemd" / "dualscope-probe.env").read_text()
    used |= set(re.findall(r"(--[a-z-]+)", env))
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "dualscope-probe.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "DaemonSet"]
    pod = docs[2]["spec"]["template"]["spec"]
    probe = next(c for c in pod["containers"] if c["name"] == "probe")
    assert probe["command"] == ["dualscope", "probe"]
    used |= {a.split("=", 1)[0] for a in probe["args"]}
    assert used and used <= options, used - options
    # secure defaults: loopback in the unit, no GPU taken from jobs, read-only /sys
    assert "DUALSCOPE_PROBE_ADDR=127.0.0.1" in unit and "NoNewPrivileges=yes" in unit
    assert "nvidia.com/gpu" not in json.dumps(probe.get("resources", {}))
    assert probe["securityContext"]["readOnlyRootFilesystem"] is True
    assert next(m for m in probe["volumeMounts"] if m["name"] == "sys")["readOnly"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_systemd_unit_passes_systemd_analyze() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run([tool, "verify", str(ROOT / "deploy" / "systemd" /
                                            "dualscope-probe.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr
