"""One module per page. Each has ``PATH``, ``TITLE``, ``layout(svc, query)`` (the page's
skeleton, or an error card when its run cannot be read) and ``register(app, svc)`` (wires
its callbacks). The callbacks themselves are plain module functions taking the
:class:`~dashboard.data.DataService` first, so tests call them directly."""

from __future__ import annotations

from typing import Any

from profiler.errors import DualscopeError

from ..clock import cutoff_ns
from ..data import DataService, RunData, Snapshot, quantize_cutoff

__all__ = ["NoRun", "open_run", "describe_error", "render_key"]


class NoRun(Exception):
    """The clock names no run (nothing is open yet)."""


def open_run(svc: DataService, clock: dict[str, Any] | None) -> tuple[RunData, Snapshot]:
    run = (clock or {}).get("run")
    if not run:
        raise NoRun("no run open")
    return svc.snapshot(run)


def describe_error(e: BaseException) -> tuple[str, str]:
    """(title, message) for an error card."""
    if isinstance(e, DualscopeError):
        return "This run cannot be read", str(e)
    return "This view failed", f"{type(e).__name__}: {e}"


def render_key(svc: DataService, clock: dict[str, Any] | None, *inputs: Any) -> list[Any] | None:
    """What a page's drawing depends on: run, data version, (quantised) replay time and the
    page's own inputs. A live tick that finds the same key has nothing new to draw, so the
    page returns ``no_update`` instead of rebuilding its figures. None when there is no run
    or it cannot be read (the page then draws its empty or error state)."""
    try:
        rd, snap = open_run(svc, clock)
    except Exception:
        return None
    assert clock is not None
    return [clock["run"], clock.get("compare"), snap.version, snap.manifest.status,
            quantize_cutoff(cutoff_ns(clock), snap), *inputs]
