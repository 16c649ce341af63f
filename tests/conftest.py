from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DEEPSEEK_TRACE = SHARED / "external" / "deepseek_train_ep64.json"


def in_ci() -> bool:
    """True under CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(present: bool, what: str, fix: str) -> None:
    """Skip a test whose outside input is missing on a developer's machine, but fail under CI
    (``CI=true``), where a silent skip would hide that the check never ran."""
    if present:
        return
    msg = f"{what} is missing: {fix}"
    if in_ci():
        pytest.fail(f"{msg} (CI=true: this check must run in CI)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running ``python -m dualscope`` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
