"""What the Prometheus / Grafana tests read from ``deploy/``: the rule files, the series each
PromQL expression names, the Grafana board's queries and links, and Debian's ``promtool`` /
``prometheus`` binaries (``make test`` installs the ``prometheus`` package)."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT, require

from probes.exporter import served_names
from probes.metrics import METRICS
from profiler.steps.exporter import SERIES as STEP_FAMILIES
from profiler.steps.exporter import step_series_names

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
RULES_DIR = PROM_DIR / "rules"
RULE_FILES = ("dualscope-thresholds.yml", "dualscope-recording.yml", "dualscope-alerts.yml")
UNIT_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
BOARD = DEPLOY / "grafana" / "dualscope.json"
#: the per-rank step series the step-level rules read: served by the run's step engine
#: (``dualscope steps RUN --follow --metrics-port``), not by the node agents
STEP_SERIES = frozenset(STEP_FAMILIES)
#: series Prometheus itself makes
BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "Inf", "NaN"})


def binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}",) if Path(p).exists()),
                                      None)


def require_prometheus(*names: str) -> dict[str, str]:
    """The binaries' paths; skips locally, fails under CI=true when one is missing."""
    found = {n: binary(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    require(not missing, f"{', '.join(missing)} (Debian package 'prometheus')",
            "run 'make test' (it installs it) or 'sudo apt-get install -y prometheus'")
    return {n: str(p) for n, p in found.items()}


def load_rules(*files: str) -> list[dict[str, Any]]:
    """Every rule of the given rule files (default: the three shipped ones), each with its
    group's name under ``group``."""
    return [rule for f in files or RULE_FILES for rule in _rules_of(f)]


@functools.cache
def _rules_of(file: str) -> tuple[dict[str, Any], ...]:
    return tuple({**rule, "group": group["name"]}
                 for group in yaml.safe_load((RULES_DIR / file).read_text())["groups"]
                 for rule in group["rules"])


def series_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, ranges, grouping lists,
    string literals and function names left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def recorded() -> dict[str, set[str]]:
    """Recorded series -> the series its expressions read (over all its rules)."""
    out: dict[str, set[str]] = {}
    for rule in load_rules():
        if "record" in rule:
            out.setdefault(rule["record"], set()).update(series_names(rule["expr"]))
    return out


def from_step_series() -> set[str]:
    """Recorded series that depend, directly or through other rules, on :data:`STEP_SERIES`."""
    deps = recorded()
    waiting: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, reads in deps.items():
            if name not in waiting and reads & (STEP_SERIES | waiting):
                waiting.add(name)
                changed = True
    return waiting


def dcgm_names() -> set[str]:
    """DCGM series the metric table names as equivalents (the board may join with these)."""
    return {n for m in METRICS for n in re.findall(r"DCGM_FI_[A-Z0-9_]*[A-Z0-9]", m.equivalent)}


def agent_names() -> frozenset[str]:
    return served_names()


def step_names() -> frozenset[str]:
    """What the step exporter serves (``dualscope steps --follow --metrics-port``)."""
    return step_series_names()


def board() -> dict[str, Any]:
    return json.loads(BOARD.read_text())


def board_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel query."""
    return [(p["title"], t["expr"]) for p in board()["panels"] for t in p.get("targets", [])
            if t.get("expr")]


def board_links() -> list[str]:
    b = board()
    urls = [link["url"] for link in b.get("links", [])]
    for p in b["panels"]:
        urls += [link["url"] for link in p.get("fieldConfig", {}).get("defaults", {})
                 .get("links", [])]
    return urls


def fill(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's variables (``$x``, ``${x}``, ``${x:fmt}``) by ``values`` and its
    interval variables by a fixed range."""
    values = {"__rate_interval": "1m", "__interval": "10s", "__range": "5m", **values}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"Grafana variable ${name} in {expr!r} has no test value")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)
