"""The dashboard's one colour system: every colour a figure or the stylesheet uses, by meaning.

Rules (docs/dashboard.md, "Colours"):

- a data colour means one thing everywhere: F is the same blue on the Timeline, the Model page
  and the ideal rows; PP send/recv is the same yellow on the Timeline and in the bubble
  attribution ("waiting on P2P"); the colours of ops and communication kinds are used for
  nothing else (only where the meaning is the same: :data:`SM`, :data:`ATTRIBUTION` ``p2p``);
- status colours (:data:`OK`, :data:`WARN`, :data:`CRIT`) mark states only (KPI borders,
  alerts, badges, better / worse deltas) and are never used for a data series;
- the series of any one figure differ by at least CIEDE2000 10 for normal vision and under
  simulated deuteranopia and protanopia, and every data colour has a WCAG contrast of at least
  3:1 on the panel (tests/test_dashboard_palette.py checks both, the browser test checks the
  legends as drawn).

``assets/style.css`` declares the same UI and status colours as CSS variables (the palette
test compares them).
"""

from __future__ import annotations

__all__ = [
    "BG", "PANEL", "PANEL_2", "GRID", "TEXT", "DIM", "ACCENT", "OK", "WARN", "CRIT", "STATUS",
    "ON_CRIT",
    "OPS", "COMM", "BUBBLE", "PHASE_MARK", "TIMELINE", "PHASES", "ATTRIBUTION", "OVERLAP",
    "SM", "LINKS", "RUNS", "SERIES", "LINE", "PEAK", "SEQUENTIAL", "DIVERGING", "FAMILIES",
    "rgba",
]

# -- the interface (dark theme) ----------------------------------------------------------
BG = "#0b1016"
PANEL = "#111821"
PANEL_2 = "#151e29"
GRID = "#1f2b38"
TEXT = "#d7e0ea"
DIM = "#8a9aab"
#: links, focus, the "now" line of live and replay; not a data series
ACCENT = "#22d3ee"

# -- status: states only, never data -----------------------------------------------------
OK = "#34d399"
WARN = "#fbbf24"
CRIT = "#f87171"
STATUS = {"ok": OK, "warn": WARN, "crit": CRIT}
#: text on a badge filled with :data:`CRIT` (the DEAD run badge)
ON_CRIT = "#2a0808"

# -- pipeline ops and communication kinds (Timeline, Model) ------------------------------
#: forward, backward, input-grad, weight-grad, overlapped forward&backward, unlabelled compute
OPS = {"F": "#60a0f8", "B": "#d08000", "I": "#a05018", "W": "#f0b890", "FB": "#7060f0",
       "compute": "#8098a0"}
#: expert-parallel dispatch and combine, pipeline send/recv, any other communication
COMM = {"dispatch": "#90d8f0", "combine": "#f0478e", "pp": "#ece04a", "comm": "#eeeeee"}
#: idle inside a step window (the bubble analysis)
BUBBLE = "#487060"
#: where a rank's warm-up ends and its cool-down starts (ticks on the Timeline)
PHASE_MARK = "#fcfcd8"
#: every category the Timeline draws, by its key in dashboard.aggregate.CATEGORIES
TIMELINE = {**OPS, **COMM, "bubble": BUBBLE}

# -- derived views ---------------------------------------------------------------------
#: the bubble split by pipeline phase (shades of the bubble colour, light to dark)
PHASES = {"warmup": "#9fd0bd", "steady": "#5f9684", "cooldown": "#46705f"}
#: the bubble's attribution: what the schedule implies, and the excess by cause
ATTRIBUTION = {"ideal": "#a99bd8", "slow_stage": "#e39a7a", "p2p": COMM["pp"],
               "host_gap": "#6b7684", "measured": TEXT}
#: communication hidden behind compute vs exposed on the critical path
OVERLAP = {"hidden": "#2f6f86", "exposed": "#c4e9f7"}
#: SMs held by communication vs compute kernels, and idle (communication and compute take
#: the colours of dispatch and F: the same meaning, never a different one)
SM = {"comm": COMM["dispatch"], "compute": OPS["F"], "idle": "#273445"}
LINKS = {"nvlink": "#4a78f0", "ib": "#a3e4d7"}
#: the open run and the run it is compared with
RUNS = ("#8ec5ff", "#f4a6c6")
#: generic series (layers, experts): at most this many lines share one figure
SERIES = ("#96d2ff", "#f4a6c6", "#e0d84a", "#4a78f0", "#8a8f98", "#b07a3a")
#: a single measured line (small multiples)
LINE = "#8ec5ff"
#: a declared peak or cap drawn over a chart
PEAK = "#c8ccd2"

#: share of peak, low (a degraded link: dark) to high; cividis-like, safe for every CVD
SEQUENTIAL = [[0.0, "#0d1b33"], [0.25, "#2c3e64"], [0.5, "#66697a"], [0.75, "#b3a46b"],
              [1.0, "#fde94c"]]
#: below / at / above a reference (expert load vs the mean): blue, panel, orange
DIVERGING = [[0.0, "#4f8fd6"], [0.5, PANEL], [1.0, "#e8923a"]]

#: every family of data colours whose members may share one figure (tests walk these)
FAMILIES: dict[str, dict[str, str]] = {
    "timeline": {**TIMELINE, "phase boundary": PHASE_MARK},
    "phases": PHASES, "attribution": ATTRIBUTION, "overlap": OVERLAP, "sm": SM,
    "links": LINKS, "runs": dict(zip(("this run", "compared run"), RUNS, strict=True)),
    "series": {f"series {i}": c for i, c in enumerate(SERIES)},
}


def rgba(color: str, alpha: float) -> str:
    """``#rrggbb`` as ``rgba(r,g,b,alpha)``."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:g})"
