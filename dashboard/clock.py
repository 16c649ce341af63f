"""The view clock: one :class:`Clock` that every page listens to (kept in a ``dcc.Store`` as
its :meth:`Clock.to_store` dict; callbacks turn that back with :func:`as_clock`).

Modes: ``live`` (the run's manifest says a writer is attached: refresh every tick, show
everything read so far), ``offline`` (a finished or imported run: draw once) and ``replay``
(a finished run played against a virtual clock: ``pos_s`` seconds after the run's start,
advanced by ``speed`` x the tick interval). Pages ask :func:`cutoff_ns` for the time up to
which to show data: ``None`` in live and offline, the virtual time in replay. That is the whole
difference between live and replay; the rest of the code path is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypeAlias

__all__ = ["SPEEDS", "Mode", "Clock", "RunInfo", "ClockLike", "as_clock", "default_speed",
           "new_clock", "next_clock", "cutoff_ns", "ticking", "clock_label"]

SPEEDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
Mode = Literal["live", "offline", "replay"]
_MODES = ("live", "offline", "replay")


@dataclass(frozen=True)
class Clock:
    """What every page draws for: the open run (and the one compared with it), the mode, and
    in replay the virtual position. Times: ``pos_s`` and ``duration_s`` in s from the run's
    start ``t0_ns`` (ns, run clock); ``speed`` x real time; ``tick`` counts interval ticks."""

    run: str | None = None
    compare: str | None = None
    mode: Mode = "offline"
    playing: bool = False
    speed: float = 1.0
    pos_s: float = 0.0
    duration_s: float = 0.0
    t0_ns: int = 0
    tick: int = 0
    #: a writer is attached to the run (the manifest says live), whatever the mode shown
    live_run: bool = False

    @classmethod
    def from_store(cls, data: Mapping[str, Any]) -> Clock:
        """The clock a ``dcc.Store`` holds (:meth:`to_store`); missing keys take the defaults,
        unknown ones are ignored."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("mode") not in _MODES:
            kw.pop("mode", None)
        return cls(**kw)

    def to_store(self) -> dict[str, Any]:
        """The JSON form kept in the ``dcc.Store``."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        """Read a field by name, as from its :meth:`to_store` form (``clock["mode"]``)."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class RunInfo:
    """What the app knows of the run the URL names. ``live`` / ``duration_s`` None: not told
    (an event keeps the clock's own value)."""

    run: str | None = None
    compare: str | None = None
    live: bool | None = None
    t0_ns: int = 0
    duration_s: float | None = None

    @classmethod
    def of(cls, info: RunInfo | Mapping[str, Any] | None) -> RunInfo:
        if isinstance(info, RunInfo):
            return info
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (info or {}).items() if k in known})


#: a clock, its ``dcc.Store`` form, or nothing open (what a Dash callback receives)
ClockLike: TypeAlias = "Clock | Mapping[str, Any] | None"


def as_clock(clock: ClockLike) -> Clock | None:
    """The :class:`Clock` of ``clock`` (None when there is none)."""
    if clock is None or isinstance(clock, Clock):
        return clock
    return Clock.from_store(clock) if clock else None


def default_speed(duration_s: float, replay_s: float = 20.0) -> float:
    """The slowest listed speed that plays the run in at most ``replay_s`` seconds."""
    for s in SPEEDS:
        if duration_s / s <= replay_s:
            return s
    return SPEEDS[-1]


def new_clock(run: str | None, *, live: bool = False, t0_ns: int = 0, duration_s: float = 0.0,
              compare: str | None = None) -> Clock:
    return Clock(run=run, compare=compare, mode="live" if live else "offline",
                 speed=default_speed(duration_s), duration_s=float(duration_s),
                 t0_ns=int(t0_ns), live_run=bool(live))


def _shown_mode(c: Clock) -> Mode:
    """The mode outside replay: live while a writer is attached, else offline."""
    return "live" if c.live_run else "offline"


def next_clock(clock: ClockLike, event: str, value: float | None = None, *,
               interval_s: float = 1.0,
               run_info: RunInfo | Mapping[str, Any] | None = None) -> Clock:
    """The clock after ``event``: ``open`` (``run_info``: run, compare, live, t0_ns,
    duration_s), ``tick``, ``toggle_replay``, ``play`` (toggle), ``speed`` (value), ``seek``
    (value, s after the start)."""
    c = as_clock(clock)
    if event == "open" or c is None:
        info = RunInfo.of(run_info)
        if c is not None and c.run == info.run:
            c = replace(c, compare=info.compare,
                        duration_s=c.duration_s if info.duration_s is None else float(info.duration_s),
                        live_run=c.live_run if info.live is None else bool(info.live))
            return c if c.mode == "replay" else replace(c, mode=_shown_mode(c))
        return new_clock(info.run, live=bool(info.live), t0_ns=int(info.t0_ns),
                         duration_s=float(info.duration_s or 0.0), compare=info.compare)
    if not c.run and event != "tick":
        return c  # nothing open: nothing to replay
    if event == "tick":
        c = replace(c, tick=c.tick + 1)
        if run_info is not None:
            info = RunInfo.of(run_info)
            c = replace(c, duration_s=c.duration_s if info.duration_s is None else float(info.duration_s),
                        live_run=c.live_run if info.live is None else bool(info.live))
            if c.mode == "live" and not c.live_run:
                c = replace(c, mode="offline")  # the writer closed the run
        if c.mode == "replay" and c.playing:
            pos = min(c.duration_s, c.pos_s + interval_s * float(c.speed))
            c = replace(c, pos_s=pos, playing=pos < c.duration_s)
    elif event == "toggle_replay":
        if c.mode == "replay":
            c = replace(c, mode=_shown_mode(c), playing=False)
        else:
            c = replace(c, mode="replay", playing=True, pos_s=0.0)
    elif event == "play" and c.mode == "replay":
        restart = not c.playing and c.pos_s >= c.duration_s
        c = replace(c, pos_s=0.0 if restart else c.pos_s, playing=not c.playing)
    elif event == "speed" and value is not None:
        c = replace(c, speed=float(value))
    elif event == "seek" and value is not None and c.mode == "replay":
        c = replace(c, pos_s=float(min(max(0.0, float(value)), c.duration_s)))
    return c


def cutoff_ns(clock: ClockLike) -> int | None:
    """Show data up to this run-clock time; ``None``: everything read so far."""
    c = as_clock(clock)
    if c is None or c.mode != "replay":
        return None
    return int(c.t0_ns) + round(c.pos_s * 1e9)  # t0 may be ~1e18: stay integer


def ticking(clock: ClockLike) -> bool:
    """Whether the interval should run: live, or a replay that is playing."""
    c = as_clock(clock)
    if c is None:
        return False
    return c.mode == "live" or (c.mode == "replay" and bool(c.playing))


def clock_label(clock: ClockLike) -> str:
    c = as_clock(clock)
    if c is None or not c.run:
        return ""
    if c.mode == "replay":
        return f"{c.pos_s:.3f} / {c.duration_s:.3f} s · {c.speed:g}x"
    return f"{c.duration_s:.3f} s recorded"
