"""The view clock: one small dict in a ``dcc.Store`` that every page listens to.

Modes: ``live`` (the run's manifest says a writer is attached: refresh every tick, show
everything read so far), ``offline`` (a finished or imported run: draw once) and ``replay``
(a finished run played against a virtual clock: ``pos_s`` seconds after the run's start,
advanced by ``speed`` x the tick interval). Pages ask :func:`cutoff_ns` for the time up to
which to show data: ``None`` in live and offline, the virtual time in replay. That is the whole
difference between live and replay; the rest of the code path is shared.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SPEEDS", "default_speed", "new_clock", "next_clock", "cutoff_ns", "ticking", "clock_label"]

SPEEDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


def default_speed(duration_s: float, replay_s: float = 20.0) -> float:
    """The slowest listed speed that plays the run in at most ``replay_s`` seconds."""
    for s in SPEEDS:
        if duration_s / s <= replay_s:
            return s
    return SPEEDS[-1]


def new_clock(run: str | None, *, live: bool = False, t0_ns: int = 0, duration_s: float = 0.0,
              compare: str | None = None) -> dict[str, Any]:
    return {"run": run, "compare": compare, "mode": "live" if live else "offline",
            "playing": False, "speed": default_speed(duration_s), "pos_s": 0.0, "duration_s": float(duration_s),
            "t0_ns": int(t0_ns), "tick": 0, "live_run": bool(live)}


def next_clock(clock: dict[str, Any] | None, event: str, value: Any = None, *,
               interval_s: float = 1.0, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The clock after ``event``: ``open`` (``run_info``: run, compare, live, t0_ns,
    duration_s), ``tick``, ``toggle_replay``, ``play`` (toggle), ``speed`` (value), ``seek``
    (value, s after the start)."""
    if event == "open" or clock is None:
        info = run_info or {}
        same = clock is not None and clock.get("run") == info.get("run")
        if same and clock is not None:
            c = dict(clock)
            c["compare"] = info.get("compare")
            c["duration_s"] = float(info.get("duration_s", c["duration_s"]))
            c["live_run"] = bool(info.get("live", c.get("live_run")))
            if c["mode"] != "replay":
                c["mode"] = "live" if c["live_run"] else "offline"
            return c
        return new_clock(info.get("run"), live=bool(info.get("live")),
                         t0_ns=int(info.get("t0_ns", 0)),
                         duration_s=float(info.get("duration_s", 0.0)), compare=info.get("compare"))
    c = dict(clock)
    if not c.get("run") and event != "tick":
        return c  # nothing open: nothing to replay
    if event == "tick":
        c["tick"] = int(c.get("tick", 0)) + 1
        if run_info is not None:
            c["duration_s"] = float(run_info.get("duration_s", c["duration_s"]))
            c["live_run"] = bool(run_info.get("live", c.get("live_run")))
            if c["mode"] == "live" and not c["live_run"]:
                c["mode"] = "offline"  # the writer closed the run
        if c["mode"] == "replay" and c["playing"]:
            c["pos_s"] = min(c["duration_s"], c["pos_s"] + interval_s * float(c["speed"]))
            if c["pos_s"] >= c["duration_s"]:
                c["playing"] = False
    elif event == "toggle_replay":
        if c["mode"] == "replay":
            c["mode"] = "live" if c.get("live_run") else "offline"
            c["playing"] = False
        else:
            c.update(mode="replay", playing=True, pos_s=0.0)
    elif event == "play" and c["mode"] == "replay":
        if not c["playing"] and c["pos_s"] >= c["duration_s"]:
            c["pos_s"] = 0.0
        c["playing"] = not c["playing"]
    elif event == "speed" and value is not None:
        c["speed"] = float(value)
    elif event == "seek" and value is not None and c["mode"] == "replay":
        c["pos_s"] = float(min(max(0.0, float(value)), c["duration_s"]))
    return c


def cutoff_ns(clock: dict[str, Any] | None) -> int | None:
    """Show data up to this run-clock time; ``None``: everything read so far."""
    if not clock or clock.get("mode") != "replay":
        return None
    return int(clock["t0_ns"]) + round(clock["pos_s"] * 1e9)  # t0 may be ~1e18: stay integer


def ticking(clock: dict[str, Any] | None) -> bool:
    """Whether the interval should run: live, or a replay that is playing."""
    if not clock:
        return False
    return clock["mode"] == "live" or (clock["mode"] == "replay" and bool(clock["playing"]))


def clock_label(clock: dict[str, Any] | None) -> str:
    if not clock or not clock.get("run"):
        return ""
    if clock["mode"] == "replay":
        return f"{clock['pos_s']:.3f} / {clock['duration_s']:.3f} s · {clock['speed']:g}x"
    return f"{clock['duration_s']:.3f} s recorded"
