"""Deep links (issue 10, item 6): the URL carries the whole view — run, compared run, page
(the path), and each page's own controls — so a bookmark, a reload or back / forward shows
the same view, and alert chips and table rows link to the exact view.

Parameters (docs/dashboard.md, "URL parameters"):

=============  ==========  ==============================================================
parameter      page        value
=============  ==========  ==============================================================
``run``        all         run id
``compare``    all         run id compared with
``ranks``      Timeline    ``all``, ``pipeline:P`` or ``node:N``
``step``       Timeline    a step number, ``live`` (the newest complete step) or ``all``
``t``          Timeline    the zoomed window, ``a,b`` in s since the run's start
``node``       Links       a node name
``schedule``   Model       a schedule name; ``pp`` and ``mb`` its PP ranks, micro-batches
``group``      GPUs        ``pipeline`` (pipelines x stages) or ``node`` (nodes x GPUs)
``metric``     GPUs        ``bubble`` or ``busy``
``gpu``        SMs         ``all`` or a rank
``layer``      Experts     a MoE layer
=============  ==========  ==============================================================

How the controls and the URL stay one: a page's controls write the URL (a new history
entry) and the search they wrote into :data:`~dashboard.ids.VIEW_SHOWN`; the router redraws
a page only when the URL differs from what the page shows (a link, a reload, back or
forward), and the page's layout reads its controls from the URL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from dash import Dash, Input, Output, State
from dash.exceptions import PreventUpdate

from . import ids
from .layout import query_of

__all__ = ["PARAMS", "search_of", "with_view", "born", "sync", "parse_window", "fmt_window",
           "step_param", "step_value", "view_href"]

#: each page's own URL parameters, in the order the URL lists them
PARAMS: dict[str, tuple[str, ...]] = {"/timeline": ("ranks", "step", "t"), "/links": ("node",),
                                      "/model": ("schedule", "pp", "mb"),
                                      "/gpus": ("group", "metric"), "/sms": ("gpu",),
                                      "/experts": ("layer",)}
_BASE = ("run", "compare")


def search_of(q: Mapping[str, Any]) -> str:
    """``?run=..&compare=..&..`` of ``q`` (run and compare first, then as given; empty values
    left out; ``:`` and ``,`` kept readable)."""
    items = [(k, str(q[k])) for k in _BASE if q.get(k) not in (None, "")]
    items += [(k, str(v)) for k, v in q.items() if k not in _BASE and v not in (None, "")]
    return "?" + urlencode(items, safe=":,") if items else ""


def view_href(path: str, run: str | None, **params: Any) -> str:
    """A link to ``path`` of ``run`` with the page's parameters (None ones left out)."""
    return path + search_of({"run": run, **params})


def with_view(search: str | None, path: str, params: Mapping[str, Any]) -> str:
    """The URL search of ``path`` showing ``params``: the run and compared run of ``search``
    kept, the page's parameters replaced (the ones not given dropped)."""
    q = query_of(search)
    keep = {k: q[k] for k in _BASE if k in q}
    own = PARAMS.get(path, ())
    return search_of({**keep, **{k: params.get(k) for k in own}})


def born(q: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, Any]:
    """What a page's layout drew from the URL: its query and the controls' values (kept in
    :data:`~dashboard.ids.VIEW_BORN`)."""
    return {"q": dict(q), "params": _norm(params)}


def _norm(params: Mapping[str, Any]) -> dict[str, str | None]:
    return {k: None if v in (None, "") else str(v) for k, v in params.items()}


def sync(pathname: str | None, search: str | None, path: str, params: Mapping[str, Any],
         drawn: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """The body of a page's controls-to-URL callback: (new search, what the page shows now).
    :class:`PreventUpdate` when the page is not shown, the URL already says it, or the
    controls still hold what the page was drawn with from this very URL (``drawn``,
    :func:`born`): a page opened from ``?run=X`` keeps that URL instead of pushing a second
    history entry with its defaults spelled out (which would trap the back button)."""
    if (pathname or "/").rstrip("/") != path:
        raise PreventUpdate
    if drawn and drawn.get("q") == query_of(search) and drawn.get("params") == _norm(params):
        raise PreventUpdate
    new = with_view(search, path, params)
    if new == (search or ""):
        raise PreventUpdate
    return new, path + new


def register_sync(app: Dash, path: str, controls: Sequence[tuple[str, str, str]], *,
                  born_id: str = ids.VIEW_BORN,
                  params: Callable[..., Mapping[str, Any]] | None = None) -> None:
    """Register a page's controls-to-URL callback (:func:`sync`): ``controls`` are
    ``(parameter, component id, property)``; ``params(*values)`` turns the controls' values
    into URL parameters (default: each value under its parameter name); ``born_id``: the
    store holding what the page was drawn with (:func:`born`)."""
    names = [name for name, _, _ in controls]

    @app.callback(
        Output(ids.URL, "search", allow_duplicate=True),
        Output(ids.VIEW_SHOWN, "data", allow_duplicate=True),
        *[Input(cid, prop) for _, cid, prop in controls],
        State(ids.URL, "pathname"), State(ids.URL, "search"), State(born_id, "data"),
        prevent_initial_call=True)
    def _to_url(*args: Any) -> tuple[str, str]:
        values, (pathname, search, drawn) = args[:len(names)], args[len(names):]
        wanted = params(*values) if params is not None else dict(zip(names, values, strict=True))
        return sync(pathname, search, path, wanted, drawn)


def fmt_window(view: list[float] | None) -> str | None:
    """``[a, b]`` (s) as ``a,b`` with µs resolution; None for no window."""
    if not view or len(view) != 2:
        return None
    return ",".join(f"{float(x):.6f}".rstrip("0").rstrip(".") for x in view)


def parse_window(text: str | None) -> list[float] | None:
    """``a,b`` -> [a, b] (s, a < b); None when absent or not two increasing numbers."""
    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        return None
    return [a, b] if a < b and all(abs(x) < 1e9 for x in (a, b)) else None


def step_param(value: str | None) -> str | None:
    """The Timeline's step choice as the URL writes it: ``step:12`` -> ``12``; ``live``,
    ``all`` as they are; a zoomed window (None) leaves it out."""
    if not value:
        return None
    return value.split(":", 1)[1] if value.startswith("step:") else value


def step_value(param: str | None) -> str | None:
    """The URL's ``step`` as the Timeline's choice: ``12`` -> ``step:12``; None if absent or
    not a step."""
    if not param:
        return None
    if param in ("live", "all"):
        return param
    try:
        return f"step:{int(param)}"
    except ValueError:
        return None
