"""The layers, checked on the source (docs/architecture.md):

    dualscope (application: CLI root, reference run, demo)
        -> dashboard -> profiler <- probes

``profiler`` imports none of the others, ``probes`` and ``dashboard`` only ``profiler``, and
nothing imports ``dualscope``. Every import counts: top-level, lazy (inside a function), and a
module path written as a string (``"probes.commands:command"``, ``["-m", "dashboard.app"]``,
``importlib.import_module("probes.nvml")``). Within each package the module import graph has no
cycle, lazy imports included.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dualscope", "dashboard", "profiler", "probes")
#: package -> the packages it may import
ALLOWED = {
    "dualscope": {"dashboard", "profiler", "probes"},
    "dashboard": {"profiler"},
    "probes": {"profiler"},
    "profiler": set(),
}
#: a whole string that is a dotted module path of ours, optionally ``:attribute``
_MODULE_STRING = re.compile(
    r"^(?P<pkg>" + "|".join(PACKAGES) + r")((\.[A-Za-z_]\w*)+(:\w+)?|:\w+)$")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_relative(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _references(path: Path) -> list[tuple[str, int, str]]:
    """(referenced module, line, how) for every import and module-path string in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int, str]] = []
    # a logger's name (``getLogger("dualscope.probes")``) is a namespace, not a module path
    logger_names = {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call)
                    and getattr(n.func, "attr", getattr(n.func, "id", "")) == "getLogger"
                    for a in n.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = _resolve_relative(me, is_pkg, node.level, node.module)
            else:
                mod = node.module or ""
            out.append((mod, node.lineno, "import"))
            # ``from pkg import submodule`` names a module too
            out += [(f"{mod}.{a.name}", node.lineno, "import-name") for a in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in logger_names):
            m = _MODULE_STRING.match(node.value.strip())
            if m:
                out.append((node.value.strip().split(":")[0], node.lineno, "string"))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_upward_or_sideways_import(package: str) -> None:
    bad = []
    for path in _files(package):
        for mod, line, how in _references(path):
            top = mod.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} {how} {mod}")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: " + "; ".join(bad)


def test_layer_check_sees_strings_and_lazy_imports(tmp_path: Path) -> None:
    """The checker itself: a lazy import and a module path in a string are both found."""
    src = ROOT / "profiler" / "_layer_probe_tmp.py"
    src.write_text('def f():\n    import probes.nvml\n    return "dashboard.commands.serve_cmd:command"\n'
                   'X = ["-m", "dualscope"]\nY = "probes"  # a plain word, not a module path\n')
    try:
        refs = {(m, how) for m, _, how in _references(src)}
    finally:
        src.unlink()
    assert ("probes.nvml", "import") in refs
    assert ("dashboard.commands.serve_cmd", "string") in refs
    assert not any(m == "probes" for m, _ in refs)


def _graph(package: str) -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in _files(package)}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for ref, _, _ in _references(path):
            # the longest of our modules that the reference names (a name may be an attribute)
            parts = ref.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in mods and cand != m:
                    graph[m].add(cand)
                    break
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    # a package's __init__ re-exporting its own modules is not a cycle of concepts: drop the
    # edges from a module to the __init__ of a package that contains it
    graph = _graph(package)
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    assert not _cycles(graph), _cycles(graph)


def test_core_imports_without_gpu_or_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, dualscope.cli, profiler.store, profiler.schema, probes.base; "
            "assert 'torch' not in sys.modules and 'pynvml' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


#: modules allowed past the size limit, each with its reason (STYLE.md: a few hundred lines)
LONG_MODULES: dict[str, str] = {
    "probes/nvml.py": "one collector whose sample path (fast ctypes arrays, per-field failure "
                      "handling, repeated-total detection) reads best in one place; its "
                      "per-GPU state and GPM buffers live in nvml_gpu.py",
}
MAX_LINES = 500


def test_modules_are_short_or_say_why() -> None:
    long = {}
    for package in PACKAGES:
        for path in _files(package):
            n = len(path.read_text().splitlines())
            rel = str(path.relative_to(ROOT))
            if n > MAX_LINES and rel not in LONG_MODULES:
                long[rel] = n
    assert not long, f"split these along their seams or give a reason in LONG_MODULES: {long}"
    for rel in LONG_MODULES:  # no stale exemptions
        assert len((ROOT / rel).read_text().splitlines()) > MAX_LINES, rel
