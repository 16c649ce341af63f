"""One module per page. Each has ``PATH``, ``TITLE``, ``layout(svc, query)`` (the page's
skeleton, or an error card when its run cannot be read) and ``register(app, svc)`` (wires
its callbacks). The callbacks themselves are plain module functions taking the
:class:`~dashboard.data.DataService` first, so tests call them directly. They take the clock
as Dash hands it over (the ``dcc.Store`` dict) or as a :class:`~dashboard.clock.Clock`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dash import html
from dash.exceptions import PreventUpdate

from profiler.errors import DualscopeError

from ..clock import ClockLike, as_clock, cutoff_ns
from ..data import DataService, RunData
from ..layout import error_card, pick_run_card
from ..snapshot import Snapshot, quantize_cutoff

__all__ = ["NoRun", "open_run", "open_page", "describe_error", "render_key", "render_if_changed"]

T = TypeVar("T")


class NoRun(Exception):
    """The clock names no run (nothing is open yet)."""


def open_run(svc: DataService, clock: ClockLike) -> tuple[RunData, Snapshot]:
    """The open run of ``clock``; :class:`NoRun` when there is none."""
    c = as_clock(clock)
    if c is None or not c.run:
        raise NoRun("no run open")
    return svc.snapshot(c.run)


def open_page(svc: DataService, q: dict[str, str],
              load: Callable[[RunData, Snapshot], T] | None = None
              ) -> tuple[RunData, Snapshot, T | None] | html.Div:
    """The prologue of a page's ``layout``: ``(rd, snap, load(rd, snap))`` for the run the
    query names, or the card to show instead: "no run open" when it names none, an error card
    when the run (or what ``load`` reads from it) cannot be read."""
    run = q.get("run")
    if not run:
        return pick_run_card()
    try:
        rd, snap = svc.snapshot(run)
        extra = load(rd, snap) if load is not None else None
    except Exception as e:
        return error_card(*describe_error(e, svc))
    return rd, snap, extra


def describe_error(e: BaseException, svc: DataService | None = None) -> tuple[str, str]:
    """(title, message) for an error card: the whole reason, without the server's paths
    (``svc``: whose catalog knows the runs folder)."""
    text = str(e) if svc is None else svc.catalog.public(str(e))
    if isinstance(e, DualscopeError):
        return "This run cannot be read", text
    return "This view failed", f"{type(e).__name__}: {text}"


def render_key(svc: DataService, clock: ClockLike, *inputs: Any) -> list[Any] | None:
    """What a page's drawing depends on: run, data version, (quantised) replay time and the
    page's own inputs. A live tick that finds the same key has nothing new to draw, so the
    page returns ``no_update`` instead of rebuilding its figures. None when there is no run
    or it cannot be read (the page then draws its empty or error state)."""
    c = as_clock(clock)
    try:
        rd, snap = open_run(svc, c)
    except Exception:
        return None
    assert c is not None
    return [c.run, c.compare, snap.version, snap.manifest.status,
            quantize_cutoff(cutoff_ns(c), snap), *inputs]


def render_if_changed(svc: DataService, clock: ClockLike, last: list[Any] | None,
                      render: Callable[..., tuple[Any, ...]], *inputs: Any) -> tuple[Any, ...]:
    """A page callback's body: ``(*render(svc, clock, *inputs), key)``, or
    :class:`~dash.exceptions.PreventUpdate` when the :func:`render_key` equals ``last`` (the
    key the page drew last)."""
    key = render_key(svc, clock, *inputs)
    if key is not None and key == last:
        raise PreventUpdate
    return (*render(svc, clock, *inputs), key)
