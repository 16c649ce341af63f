"""The dashboard server's collector settings (:mod:`dashboard.heap`): a server process freezes
its long-lived heap and collects the young generation less often; building the app alone
changes no process-wide state. Each case runs in its own interpreter (the settings are the
process's)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dashboard.heap import YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"


def _gc_state(python: str, env: dict[str, str], code: str) -> dict[str, object]:
    probe = (code + "\nimport gc, json\n"
             "print(json.dumps({'frozen': gc.get_freeze_count(), "
             "'threshold': list(gc.get_threshold())}))")
    out = subprocess.run([python, "-c", probe], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_wsgi_server_settles_its_heap(python: str, cli_env: dict[str, str]) -> None:
    got = _gc_state(python, cli_env, "from dashboard.app import server\n"
                    f"server({str(SAMPLES)!r}, warm=False)")
    assert got["threshold"][0] == YOUNG_THRESHOLD  # type: ignore[index]
    assert got["frozen"] > 50_000  # the imports and the app: ~116 k objects  # type: ignore[operator]


def test_building_the_app_changes_no_process_state(python: str,
                                                   cli_env: dict[str, str]) -> None:
    got = _gc_state(python, cli_env, "from dashboard.app import create_app\n"
                    f"create_app({str(SAMPLES)!r}, warm=False)")
    assert got == {"frozen": 0, "threshold": [700, 10, 10]}


def test_settle_twice_freezes_only_what_is_new(python: str, cli_env: dict[str, str]) -> None:
    got = _gc_state(python, cli_env, "from dashboard.heap import settle\nsettle()\n"
                    "import gc\nn = gc.get_freeze_count()\nkeep = [[i] for i in range(1000)]\n"
                    "settle()\nassert gc.get_freeze_count() >= n + 1000, "
                    "(n, gc.get_freeze_count())")
    assert got["threshold"] == [YOUNG_THRESHOLD, 10, 10]
