"""The dependency direction dashboard -> profiler <- probes, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.add((str(path.relative_to(ROOT)), name.split(".")[0]))
    return found


def test_profiler_imports_neither_probes_nor_dashboard() -> None:
    bad = {(f, m) for f, m in _imports("profiler") if m in ("probes", "dashboard")}
    # the reference run may use probes through a narrow interface (DESIGN.md)
    bad = {(f, m) for f, m in bad if not f.startswith("profiler/reference/")}
    assert not bad, f"profiler must not import probes/dashboard: {sorted(bad)}"


def test_dashboard_never_imports_probes() -> None:
    bad = {(f, m) for f, m in _imports("dashboard") if m == "probes"}
    assert not bad, sorted(bad)


def test_probes_never_import_dashboard() -> None:
    bad = {(f, m) for f, m in _imports("probes") if m == "dashboard"}
    assert not bad, sorted(bad)


def test_core_imports_without_gpu_or_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, profiler.cli, profiler.store, profiler.schema; "
            "assert 'torch' not in sys.modules and 'pynvml' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
