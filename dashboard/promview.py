"""What the Links and SMs pages share about their counter source: the window a page asks
Prometheus for, and the notice line that says where the page's counters come from (or why
Prometheus was not used). The notice sits first in the page's KPI grid, across the row."""

from __future__ import annotations

import time

from dash import html

from .promsource import PromSource, Window
from .snapshot import Snapshot

__all__ = ["page_window", "source_note", "run_ids", "NOTE_CLASS"]

NOTE_CLASS = "source-note"
_BASE = {"gridColumn": "1 / -1", "fontSize": "12px", "padding": "4px 10px",
         "borderRadius": "4px", "borderLeft": "3px solid"}
_OK = {**_BASE, "borderLeftColor": "#3b82f6", "opacity": "0.85"}
_WARN = {**_BASE, "borderLeftColor": "#d97706", "background": "rgba(217, 119, 6, 0.12)"}


def page_window(src: PromSource, snap: Snapshot, cut: int | None) -> Window:
    """The page's time range: the run's first sample to the replay time, to now for a live
    run (the run clock is Unix time), or to the run's last sample."""
    live = snap.live and cut is None
    end = cut if cut is not None else (time.time_ns() if live else snap.t1_ns)
    return src.window(snap.t0_ns, end, live=live)


def run_ids(snap: Snapshot) -> tuple[str, ...]:
    """The ``run`` label values that name this run's series: its name in the dashboard (the
    directory under RUNS_DIR) and its manifest's run id."""
    return tuple(dict.fromkeys(r for r in (snap.run_id, snap.manifest.run_id) if r))


def source_note(text: str, ok: bool) -> html.Div:
    """The notice: ``ok`` when the counters come from Prometheus, a warning otherwise."""
    return html.Div(text, className=f"{NOTE_CLASS} {NOTE_CLASS}-{'ok' if ok else 'warn'}",
                    style=_OK if ok else _WARN, title=text)
