"""Model explorer: schedule, PP, micro-batches and per-chunk costs (prefilled from the open
run's fitted costs) -> the ideal timeline, its bubble against the published formula, and the
other schedules with the same costs. What-if: giving communication more SMs slows compute.

What-if model (stated on the page): with ``c0`` comm SMs measured and ``c`` asked, compute
ops scale by ``(SMs - c0) / (SMs - c)``; an F&B chunk costs the larger of its scaled compute
and its communication, which scales by ``c0 / c`` but at most 25 % faster (the links, not the
SMs, bound it), starting from ``ratio`` x F&B at ``c0`` (DeepSeek-V3: about 1 : 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from dash import Dash, Input, Output, State, ctx, dcc, html

from profiler.errors import InputError
from profiler.schedules import BUILDERS, FORMULAS, bubble_formula, build
from profiler.simulate import Costs, simulate

from .. import ids
from ..clock import ClockLike, as_clock
from ..data import DataService
from ..deeplink import born, register_sync
from ..figures import empty_figure, schedule_figure
from ..layout import fmt_num, graph, kpi, panel, query_of
from .sms import declared_cap

PATH = "/model"
TITLE = "Model"

__all__ = ["PATH", "TITLE", "layout", "register", "ModelInputs", "explore", "prefill",
           "what_if_costs", "field_errors", "DEFAULTS", "LIMITS"]

#: the paper's regime (F, B, W, F&B = 1, 2, 1, 3 ms), PP 8, 20 micro-batches, 20 of 132 SMs
DEFAULTS: dict[str, Any] = {"schedule": "dualpipe", "pp": 8, "mb": 20, "f": 1.0, "b": 2.0, "w": 1.0, "fb": 3.0,
            "p2p": 0.0, "comm_sms": 20, "sms": 132, "c0": 20, "ratio": 1.0}
#: (params, activations) per device, DualPipe README / DeepSeek-V3 table 2
MEMORY = {"1f1b": ("1x", "PP"), "zb1p": ("1x", "PP"), "dualpipe": ("2x", "PP+1"),
          "dualpipev": ("2x", "PP+1")}
_CONFIG = {"displaylogo": False}
#: what the form accepts: PP ranks and micro-batches (whole numbers), costs (ms)
LIMITS = {"pp": (1, 64), "mb": (1, 512), "cost": (0.0, 1e6)}
#: each input of the form: (component id, label)
FIELDS = {"pp": (ids.MD_PP, "PP ranks"), "mb": (ids.MD_MB, "micro-batches"),
          "f": (ids.MD_F, "F (ms)"), "b": (ids.MD_B, "B (ms)"), "w": (ids.MD_W, "W (ms)"),
          "fb": (ids.MD_FB, "F&B (ms)"), "p2p": (ids.MD_P2P, "P2P (ms)")}
WHAT_IF_TEXT = (
    "What-if: with c0 communication SMs measured and c asked, compute ops scale by "
    "(SMs − c0) / (SMs − c); an F&B chunk costs the larger of its scaled compute and its "
    "communication, which scales by c0 / c but at most 25 % faster (the links bound it), "
    "starting from F&B at c0 (DeepSeek-V3: computation : communication ≈ 1 : 1). PP is the "
    "number of ranks: DualPipeV runs 2·PP stages on them, so with the same per-chunk costs each "
    "rank does twice the work.")


def _num(label: str, cid: str, value: float, step: float = 0.1, mn: float = 0,
         mx: float | None = None) -> html.Label:
    return html.Label(className="field", children=[
        html.Span(label), dcc.Input(id=cid, type="number", value=value, min=mn, max=mx,
                                    step=step if step >= 1 else "any", debounce=True)])


def url_view(q: dict[str, str]) -> dict[str, Any]:
    """The URL's schedule, PP ranks and micro-batches (dashboard.deeplink), the valid ones."""
    out: dict[str, Any] = {}
    if q.get("schedule") in BUILDERS:
        out["schedule"] = q["schedule"]
    for k in ("pp", "mb"):
        try:
            v = int(q.get(k, ""))
        except ValueError:
            continue
        if LIMITS[k][0] <= v <= LIMITS[k][1]:
            out[k] = v
    return out


def layout(svc: DataService, q: dict[str, str]) -> html.Div:
    d = {**DEFAULTS, **url_view(q)}
    return html.Div(className="model-page", children=[
        dcc.Store(id=ids.MD_BORN, data=born(q, {k: d[k] for k in ("schedule", "pp", "mb")})),
        dcc.Store(id=ids.MD_SOURCE, data={"run": None, "sms": d["sms"], "c0": d["c0"]}),
        panel(html.Div(className="model-form", children=[
            html.Label(className="field", children=[html.Span("schedule"), dcc.Dropdown(
                id=ids.MD_SCHEDULE, options=[{"label": n, "value": n} for n in BUILDERS],
                value=d["schedule"], clearable=False)]),
            _num("PP ranks", ids.MD_PP, d["pp"], 1, *LIMITS["pp"]),
            _num("micro-batches", ids.MD_MB, d["mb"], 1, *LIMITS["mb"]),
            _num("F (ms)", ids.MD_F, d["f"], 0.01),
            _num("B (ms)", ids.MD_B, d["b"], 0.01),
            _num("W (ms)", ids.MD_W, d["w"], 0.01),
            _num("F&B (ms)", ids.MD_FB, d["fb"], 0.01),
            _num("P2P (ms)", ids.MD_P2P, d["p2p"], 0.01),
            html.Button("Costs from the open run", id=ids.MD_PREFILL, className="btn", n_clicks=0),
        ]), html.Div(className="what-if", children=[
            html.Span("what-if: communication SMs", className="dim"),
            dcc.Slider(id=ids.MD_COMM_SMS, min=2, max=64, step=2, value=d["comm_sms"],
                       marks={v: str(v) for v in (2, 10, 20, 32, 48, 64)},
                       tooltip={"placement": "bottom", "always_visible": True}),
        ]), title="Schedule model"),
        html.Div(id=ids.MD_ERRORS, className="field-errors"),
        html.Div(id=ids.MD_SUMMARY, className="kpi-grid kpi-grid-4"),
        panel(graph(ids.MD_FIG, _CONFIG)),
        panel(html.Div(id=ids.MD_TABLE), title="Every schedule with these costs"),
        html.Div(className="legend-help dim small", children=WHAT_IF_TEXT),
    ])


@dataclass(frozen=True, kw_only=True)
class ModelInputs:
    """What the explorer simulates: ``schedule`` on ``pp`` ranks with ``mb`` micro-batches,
    per-chunk costs ``f``, ``b``, ``w``, ``fb`` and ``p2p`` (ms), and the what-if:
    ``comm_sms`` asked, ``c0`` measured, of ``sms`` per GPU, ``ratio`` = communication / F&B
    at ``c0`` (see the module doc). Values come from the page's inputs as typed (a field the
    user cleared is None), so :func:`explore` checks them."""

    schedule: str
    pp: int
    mb: int
    f: float
    b: float
    w: float
    fb: float
    p2p: float = 0.0
    comm_sms: float
    sms: float
    c0: float
    ratio: float = 1.0


def prefill(svc: DataService, clock: ClockLike) -> dict[str, Any]:
    """Schedule, PP, micro-batches and mean fitted costs (ms) of the open run; the defaults
    (with ``source``) when there is no run or it has no pipeline ops."""
    out = dict(DEFAULTS, source="defaults: the paper's F : B : W : F&B = 1 : 2 : 1 : 3",
               run=None)
    c = as_clock(clock)
    run = c.run if c is not None else None
    if not run:
        return out
    try:
        rd, snap = svc.snapshot(run)
        ideal = rd.ideal(snap)
    except Exception as e:
        out["source"] = f"defaults (run {run} unreadable: {e})"
        return out
    out["run"] = run
    topo, par = snap.manifest.topology, snap.manifest.parallel
    out["sms"] = int(topo.sms_per_gpu or DEFAULTS["sms"])
    out["c0"] = int(declared_cap(snap.manifest.extra) or DEFAULTS["c0"])
    out["comm_sms"] = out["c0"]
    if not ideal.ok:
        out["source"] = f"defaults: {ideal.reason}"
        return out
    c = ideal.costs
    name = ideal.schedule_name if ideal.schedule_name in BUILDERS else out["schedule"]
    out.update(schedule=name, pp=int(ideal.pp or par.pp or out["pp"]),
               mb=int(ideal.microbatches or par.microbatches or out["mb"]),
               f=round(float(c["f_ns"].mean()) / 1e6, 4), b=round(float(c["b_ns"].mean()) / 1e6, 4),
               w=round(float(c["w_ns"].mean()) / 1e6, 4), fb=round(float(c["fb_ns"].mean()) / 1e6, 4),
               source=f"fitted from run {run}: medians of its measured ops, mean over stages")
    return out


def what_if_costs(f: float, b: float, w: float, fb: float, *, comm_sms: float, c0: float,
                  sms: float, ratio: float = 1.0) -> tuple[float, float, float, float]:
    """Costs with ``comm_sms`` instead of ``c0`` communication SMs (see the module doc)."""
    comm_sms = min(max(comm_sms, 1.0), sms - 1.0)
    slow = (sms - c0) / (sms - comm_sms)
    comm = ratio * fb * max(c0 / comm_sms, 0.75)
    return f * slow, b * slow, w * slow, max(fb * slow, comm)


def _whole(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v != int(v):
        return None
    return int(v)


def field_errors(x: ModelInputs) -> dict[str, str]:
    """Field name (a key of :data:`FIELDS`) -> what is wrong with it and the valid range, in
    the words of the form; empty when every field is valid."""
    err: dict[str, str] = {}
    lo, hi = LIMITS["pp"]
    pp = _whole(x.pp)
    dual = x.schedule == "dualpipe"
    if pp is None or not lo <= pp <= hi:
        err["pp"] = f"a whole number from {2 if dual else lo} to {hi}" + (
            ", even for dualpipe" if dual else "")
    elif dual and pp % 2:
        err["pp"] = (f"dualpipe needs an even number of pipeline ranks: {pp} is odd; use "
                     f"{max(2, pp - 1)} or {pp + 1}")
    mb = _whole(x.mb)
    lo, hi = LIMITS["mb"]
    need = (2 * pp if x.schedule in ("dualpipe", "dualpipev") else pp) if pp else lo
    if mb is None or not lo <= mb <= hi:
        err["mb"] = f"a whole number from {max(lo, need)} to {hi}"
    elif pp and "pp" not in err and mb < need:
        err["mb"] = (f"{x.schedule} needs at least {need} micro-batches with {pp} PP ranks "
                     f"({'2 × PP' if need == 2 * pp else 'PP'}); {mb} is too few")
    elif dual and mb % 2:
        err["mb"] = f"dualpipe splits micro-batches between two directions: use {mb - 1} or {mb + 1}"
    lo_c, hi_c = LIMITS["cost"]
    for name in ("f", "b", "w", "fb", "p2p"):
        v = getattr(x, name)
        if name == "p2p" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not lo_c <= v <= hi_c:
            err[name] = f"a duration in ms from {lo_c:g} to {hi_c:g}"
    if "w" not in err and "b" not in err and x.w > x.b:
        err["w"] = f"W is part of the backward B ({x.b:g} ms) and cannot exceed it"
    return err


def _for_people(msg: str) -> str:
    """A library message (written for the CLI) in the words of the form."""
    for flag, label in (("--microbatches", "micro-batches"), ("--pp", "PP ranks"),
                        ("cost --fb", "F&B"), ("cost --w", "W"), ("cost --b", "B"),
                        ("cost --f", "F"), ("--w", "W"), ("--b", "B"), ("--", "")):
        msg = msg.replace(flag, label)
    return msg


def explore(inputs: ModelInputs) -> tuple[Any, list[html.Div], Any]:
    """(ideal timeline figure, summary tiles, schedules table) for the inputs; when a field is
    invalid, an empty figure and one line per invalid field with its valid range."""
    x = inputs
    bad = field_errors(x)
    if bad:
        lines = [html.Div([html.B(FIELDS[k][1]), f": {v}"]) for k, v in bad.items()]
        return (empty_figure("Fix the marked fields to see the schedule"),
                [html.Div(lines, className="error-inline")],
                html.Div("Fix the marked fields to compare the schedules.", className="dim"))
    schedule, f, b, w, fb, p2p = x.schedule, float(x.f), float(x.b), float(x.w), float(x.fb), x.p2p
    comm_sms, sms, c0, ratio = float(x.comm_sms), float(x.sms), float(x.c0), x.ratio
    pp, mb = int(x.pp), int(x.mb)
    try:
        f2, b2, w2, fb2 = what_if_costs(f, b, w, fb, comm_sms=comm_sms, c0=c0, sms=sms,
                                        ratio=ratio)
        costs = Costs(f2, b2, w2, fb2)
        sim = simulate(build(schedule, pp, mb), costs, p2p=float(p2p or 0), unit_ns=1e6)
        base = simulate(build(schedule, pp, mb), Costs(f, b, w, fb), p2p=float(p2p or 0),
                        unit_ns=1e6)
    except InputError as e:
        msg = _for_people(str(e))
        return empty_figure(msg), [html.Div(msg, className="error-inline")], ""
    formula = bubble_formula(schedule, pp, f=f2, b=b2, w=w2, fb=fb2)
    spans = sim.spans.assign(start=sim.spans["start_ns"] / 1e6, end=sim.spans["end_ns"] / 1e6)
    fig = schedule_figure(spans, title=f"Simulated {schedule} · PP {pp} · {mb} micro-batches · "
                                       f"{comm_sms:g} comm SMs")
    delta = sim.makespan / base.makespan - 1 if base.makespan else 0.0
    tiles = [
        kpi("Makespan (simulated)", f"{sim.makespan:.2f} ms",
            f"{delta:+.1%} vs {c0:g} comm SMs" if comm_sms != c0
            else f"with the costs above and {c0:g} comm SMs"),
        kpi("Largest bubble (simulated)", f"{sim.max_bubble:.2f} ms",
            f"{sim.max_bubble / sim.makespan:.1%} of the step" if sim.makespan else ""),
        kpi("Published formula", "n/a" if formula is None else f"{formula:.2f} ms",
            FORMULAS.get(schedule, "")),
        kpi("Costs simulated (ms)", f"{f2:.2f} / {b2:.2f} / {w2:.2f} / {fb2:.2f}",
            "F / B / W / F&B" + ("" if comm_sms == c0 else f" at {comm_sms:g} comm SMs")),
    ]
    rows = []
    for name in BUILDERS:
        try:
            s = simulate(build(name, pp, mb), costs, p2p=float(p2p or 0), unit_ns=1e6)
            fo = bubble_formula(name, pp, f=f2, b=b2, w=w2, fb=fb2)
            mem = MEMORY.get(name, ("", ""))
            rows.append({"schedule": name, "makespan_ms": s.makespan, "bubble_ms": s.max_bubble,
                         "formula_ms": fo, "params": mem[0], "activations": mem[1], "error": ""})
        except InputError as e:
            rows.append({"schedule": name, "error": _for_people(str(e))})
    table = _table(pd.DataFrame(rows), schedule)
    return fig, tiles, table


def _table(df: pd.DataFrame, current: str) -> html.Table:
    body = []
    for _, r in df.iterrows():
        cls = "current" if r["schedule"] == current else ""
        if r.get("error"):
            body.append(html.Tr(className=cls, children=[html.Td(r["schedule"]),
                                                          html.Td(r["error"], colSpan=5, className="dim")]))
            continue
        body.append(html.Tr(className=cls, children=[
            html.Td(r["schedule"]), html.Td(f"{r['makespan_ms']:.2f}"), html.Td(f"{r['bubble_ms']:.2f}"),
            html.Td(fmt_num(r["formula_ms"], ".2f")), html.Td(r["params"]), html.Td(r["activations"])]))
    return html.Table(className="table", children=[
        html.Thead(html.Tr([html.Th(h) for h in ("schedule", "makespan (ms)", "largest bubble (ms)",
                                                 "formula (ms)", "params / device",
                                                 "activations / device")])),
        html.Tbody(body)])


def register(app: Dash, svc: DataService) -> None:
    @app.callback(
        Output(ids.MD_SCHEDULE, "value"), Output(ids.MD_PP, "value"), Output(ids.MD_MB, "value"),
        Output(ids.MD_F, "value"), Output(ids.MD_B, "value"), Output(ids.MD_W, "value"),
        Output(ids.MD_FB, "value"), Output(ids.MD_COMM_SMS, "value"), Output(ids.MD_SOURCE, "data"),
        Output(ids.MD_BORN, "data"),
        Input(ids.MD_PREFILL, "n_clicks"), Input(ids.CLOCK, "data"), State(ids.MD_SOURCE, "data"),
        State(ids.URL, "search"))
    def _prefill(_n: int, clock: dict[str, Any] | None, source: dict[str, Any] | None,
                 search: str | None) -> tuple[Any, ...]:
        c = as_clock(clock)
        run = c.run if c is not None else None
        if ctx.triggered_id == ids.CLOCK and source and source.get("run") == run and run:
            from dash.exceptions import PreventUpdate

            raise PreventUpdate
        p = prefill(svc, clock)
        q = query_of(search)
        if ctx.triggered_id != ids.MD_PREFILL:  # opening the page: the URL's view wins
            p.update(url_view(q))
        return (p["schedule"], p["pp"], p["mb"], p["f"], p["b"], p["w"], p["fb"], p["comm_sms"],
                {"run": p["run"], "sms": p["sms"], "c0": p["c0"], "source": p["source"]},
                born(q, {k: p[k] for k in ("schedule", "pp", "mb")}))

    register_sync(app, PATH, [("schedule", ids.MD_SCHEDULE, "value"), ("pp", ids.MD_PP, "value"),
                              ("mb", ids.MD_MB, "value")], born_id=ids.MD_BORN)

    field_outputs = [Output(cid, "className") for cid, _ in FIELDS.values()]

    @app.callback(
        Output(ids.MD_FIG, "figure"), Output(ids.MD_SUMMARY, "children"),
        Output(ids.MD_TABLE, "children"), Output(ids.MD_ERRORS, "children"), *field_outputs,
        Input(ids.MD_SCHEDULE, "value"), Input(ids.MD_PP, "value"), Input(ids.MD_MB, "value"),
        Input(ids.MD_F, "value"), Input(ids.MD_B, "value"), Input(ids.MD_W, "value"),
        Input(ids.MD_FB, "value"), Input(ids.MD_P2P, "value"), Input(ids.MD_COMM_SMS, "value"),
        Input(ids.MD_SOURCE, "data"))
    def _explore(schedule: str, pp: int, mb: int, f: float, b: float, w: float, fb: float,
                 p2p: float, comm: float, source: dict[str, Any] | None) -> tuple[Any, ...]:
        src = source or {}
        inputs = ModelInputs(
            schedule=schedule, pp=pp, mb=mb, f=f, b=b, w=w, fb=fb, p2p=p2p, comm_sms=comm,
            sms=src.get("sms", DEFAULTS["sms"]), c0=src.get("c0", DEFAULTS["c0"]))
        bad = field_errors(inputs)
        fig, tiles, table = explore(inputs)
        note = html.Div(src.get("source", ""), className="source-note dim small")
        errors: Any = ""
        if bad:  # the messages sit under the form, the tiles stay empty
            errors, tiles = tiles, []
        classes = ["invalid" if k in bad else "" for k in FIELDS]
        return (fig, [*tiles, note] if not bad else [note], table, errors, *classes)
