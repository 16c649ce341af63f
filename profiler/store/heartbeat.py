"""A writer's sign of life: ``RUN/heartbeat/<writer>.json``, rewritten atomically (temporary
file, rename) every ``interval_s`` by a daemon thread, so a reader can tell a slow step (the
heartbeat beats, no new data) from a dead job (the heartbeat stops, the process is gone).

Content (docs/trace-format.md, "Heartbeats")::

    {"writer": "rank-00003", "pid": 4242, "host": "node0", "beat": 17,
     "interval_s": 1.0, "started_unix_ns": ..., "updated_unix_ns": ...,
     "state": "running" | "finished" | "failed", "step": 12,
     "streams": {"spans/rank-00003": {"rows": 5120, "last_data_ns": ...,
                                      "last_write_unix_ns": ..., "step": 12,
                                      "closed": false}}}

``last_data_ns`` is the newest row's time on the run clock (``end_ns`` of spans, ``ts_ns`` of
counters); ``last_write_unix_ns`` the wall time of the flush that wrote it. The file is not
fsynced: a heartbeat is advisory and only matters while the machine is up. A writer whose
heartbeat folder is gone (a failed command removed its temporary run) stops beating quietly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Heartbeat", "HEARTBEAT_DIR", "read_heartbeats"]

HEARTBEAT_DIR = "heartbeat"


class Heartbeat:
    """The heartbeat file of one writer process (or one rank). Thread-safe: writers call
    :meth:`wrote` from their own threads; the beat runs on a daemon thread."""

    def __init__(self, run_dir: str | os.PathLike[str], name: str, *,
                 interval_s: float = 1.0, start: bool = True) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval {interval_s} must be positive seconds")
        self.dir = Path(run_dir) / HEARTBEAT_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.json"
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {
            "writer": name, "pid": os.getpid(), "host": socket.gethostname(), "beat": 0,
            "interval_s": interval_s, "started_unix_ns": time.time_ns(),
            "updated_unix_ns": 0, "state": "running", "step": None, "streams": {},
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beat()
        if start:
            self.start()

    def start(self) -> None:
        """Start beating every ``interval_s`` (once; a no-op after :meth:`close`)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._loop,
                                            name=f"heartbeat-{self._state['writer']}",
                                            daemon=True)
            self._thread.start()

    # -- what writers tell it ------------------------------------------------------------
    def wrote(self, stream: str, rows: int, *, last_data_ns: int | None = None,
              step: int | None = None) -> None:
        """``rows`` more rows of ``stream`` reached the store (called after each flush). A
        stream's first flush beats at once, so readers learn whose stream it is."""
        now = time.time_ns()
        with self._lock:
            new = stream not in self._state["streams"]
            st = self._state["streams"].setdefault(
                stream, {"rows": 0, "last_data_ns": None, "last_write_unix_ns": None,
                         "step": None, "closed": False})
            st["rows"] += rows
            st["last_write_unix_ns"] = now
            if last_data_ns is not None:
                st["last_data_ns"] = max(last_data_ns, st["last_data_ns"] or last_data_ns)
            if step is not None:
                st["step"] = max(step, st["step"] if st["step"] is not None else step)
        if new:
            self.beat()

    def closed(self, stream: str) -> None:
        """``stream`` was sealed by a clean close."""
        with self._lock:
            st = self._state["streams"].setdefault(
                stream, {"rows": 0, "last_data_ns": None, "last_write_unix_ns": None,
                         "step": None, "closed": False})
            st["closed"] = True
        self.beat()

    def set_step(self, step: int) -> None:
        """The step the writer's job is running now (it may not have flushed any row yet)."""
        with self._lock:
            self._state["step"] = int(step)

    # -- the beat --------------------------------------------------------------------------
    def beat(self) -> bool:
        """Rewrite the file now; False (and the thread stops) when it cannot be written."""
        with self._lock:
            self._state["beat"] += 1
            self._state["updated_unix_ns"] = time.time_ns()
            text = json.dumps(self._state, sort_keys=True)
        tmp = self.dir / f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError:  # a full disk, a removed run: stop beating, leave no temporary
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._stop.set()
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.beat():
                return

    def close(self, state: str = "finished") -> None:
        """Stop beating and leave ``state`` (``finished`` or ``failed``) in the file."""
        if state not in ("finished", "failed"):
            raise ValueError(f"heartbeat final state {state!r} is not finished or failed")
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5 * self.interval_s)
        with self._lock:
            self._state["state"] = state
        self.beat()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("finished" if exc_type is None else "failed")


def read_heartbeats(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every heartbeat of a run as a dict (see the module doc); a file that is not valid JSON
    (never the case with the atomic rename, but a copy could be cut) is left out."""
    import orjson  # the import path's JSON parser: ~3x json.load on these small files

    root = os.path.join(run_dir, HEARTBEAT_DIR)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for entry in names:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        try:
            with open(os.path.join(root, entry), "rb") as f:
                d = orjson.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("writer"), str):
            out.append(d)
    return out
