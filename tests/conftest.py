from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DEEPSEEK_TRACE = SHARED / "external" / "deepseek_train_ep64.json"


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running ``python -m profiler.cli`` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
