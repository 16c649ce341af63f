"""Issue 16 without a browser: honest labels, hovers with context, clear empty states, errors
for people, phases from the bubble analysis, and run-vs-run deltas — checked on the renders of
both bundled samples."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from dash._utils import to_json

from dashboard.clock import next_clock
from dashboard.data import DataService
from dashboard.figures import bubble_phase_figure, step_time_figure
from dashboard.overview_model import deltas
from dashboard.pages import experts, links, model, overview, sms, timeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
SYN = "synthetic-dsv3-pp16-ep64"
REF = "reference-cpu-pp2-ep2-dualpipev"


def _text(component: Any) -> str:
    if component is None:
        return ""
    if isinstance(component, str):
        return component
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> DataService:
    root = tmp_path_factory.mktemp("runs")
    for name in (SYN, REF):
        (root / name).symlink_to(SAMPLES / name, target_is_directory=True)
    return DataService(str(root))


def _clock(svc: DataService, run: str, compare: str | None = None) -> Any:
    _rd, snap = svc.snapshot(run)
    return next_clock(None, "open", run_info={"run": run, "t0_ns": snap.t0_ns, "compare": compare,
                                              "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9})


def _figures(obj: Any) -> list[go.Figure]:
    if isinstance(obj, go.Figure):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [f for o in obj for f in _figures(o)]
    return []


def _all_figures(svc: DataService, run: str) -> list[go.Figure]:
    c = _clock(svc, run)
    out = [overview.render(svc, c, None, None, None), overview.render_phases(svc, c),
           links.render(svc, c, "node5", None, None), sms.render(svc, c, "all"),
           experts.render(svc, c, 0),
           timeline.render(svc, c, None, "all", ["comm", "ideal"], None),
           timeline.render(svc, c, None, "pipeline:1" if run == SYN else "all",
                           ["comm", "ideal"], None, "step", timeline.step_options(
                               timeline.step_windows(*svc.snapshot(run)), False)[1])]
    return _figures(out)


_LONG_NUMBER = re.compile(r":\.?([5-9]|\d{2,})[fgrs]")  # d3 formats of 5+ digits


@pytest.mark.parametrize("run", [SYN, REF])
def test_hovers_carry_units_and_at_most_four_digits(svc: DataService, run: str) -> None:
    figs = _all_figures(svc, run)
    assert len(figs) >= 10
    for f in figs:
        for t in f.data:
            tmpl = t.hovertemplate or ""
            assert not _LONG_NUMBER.search(tmpl), tmpl
            if "micro-batch" in tmpl:  # a span: who, where and when
                for field in ("rank", "step", "stage", "start", "s ·"):
                    assert field in tmpl, (field, tmpl)
        for ax in ("xaxis", "yaxis"):
            fmt = f.layout[ax].hoverformat or ""
            assert not _LONG_NUMBER.search(":" + fmt), fmt


def test_timeline_heatmap_hover_names_row_and_time(svc: DataService) -> None:
    fig, status, _v, _s = timeline.render(svc, _clock(svc, SYN), None, "all",
                                          ["comm", "ideal"], None)
    assert "heatmap" in status
    hm = fig.data[0]
    assert "%{y}" in hm.hovertemplate and "t %{x:.4~r} s" in hm.hovertemplate
    assert list(hm.y[:3]) == ["rank 0", "rank 0 comm", "rank 0 ideal"]


def test_step_time_axis_shows_the_variance_with_a_legend(svc: DataService) -> None:
    steps = overview.compute(svc, SYN, _clock(svc, SYN), dict(overview.DEFAULT_THRESHOLDS)).steps
    f = step_time_figure(steps)
    lo, hi = f.layout.yaxis.range
    t = steps["step_time_s"]
    assert 0 < lo < t.min() and hi > t.max()  # not from 0: the spread shows
    legend = [tr.name for tr in f.data if tr.showlegend is not False]
    assert "step time" in legend
    slow = step_time_figure(steps.assign(step_time_s=np.r_[t.iloc[:-1], t.iloc[-1] * 2]))
    assert any("slower than" in (tr.name or "") for tr in slow.data)


@pytest.mark.parametrize("run,positions", [(SYN, list(range(16))), (REF, [0, 1])])
def test_bubble_charts_show_only_real_positions(svc: DataService, run: str,
                                                positions: list[int]) -> None:
    out = overview.render(svc, _clock(svc, run), None, None, None)
    (phases,) = overview.render_phases(svc, _clock(svc, run))
    for f in (out[3], phases):
        assert list(f.layout.xaxis.tickvals) == positions
        assert list(f.layout.xaxis.range) == [-0.5, positions[-1] + 0.5]


def test_phase_chart_adds_up_to_the_bubble_of_the_analysis(svc: DataService) -> None:
    rd, snap = svc.snapshot(SYN)
    by_stage = rd.analyses(snap)["bubbles_by_stage"]
    f = bubble_phase_figure(by_stage)
    assert [t.name for t in f.data] == ["warm-up", "steady", "cool-down"]
    total = sum(np.asarray(t.y) for t in f.data)
    np.testing.assert_allclose(total, by_stage["bubble_ns_mean"] / by_stage["window_ns"])


def test_cpu_run_says_so(svc: DataService) -> None:
    c = _clock(svc, REF)
    kpis = _text(overview.render(svc, c, None, None, None)[0])
    assert "CPU run: no SMs" in kpis and "CPU run: no NVLink" in kpis
    assert "sms_per_gpu" not in kpis and "topology" not in kpis
    _k, area, seconds = sms.render(svc, c, "all")
    assert "CPU run: no SMs" in to_json(area)
    body = sms.layout(svc, {"run": REF})
    assert "CPU run: no SMs" in _text(body) and "topology." not in to_json(body)
    page = links.layout(svc, {"run": REF})
    assert "no NVLink or InfiniBand" in _text(page) and "dispatch" not in _text(page)


def test_model_page_labels_simulated_numbers_and_checks_fields() -> None:
    base = dict(schedule="dualpipe", pp=8, mb=20, f=1, b=2, w=1, fb=3, p2p=0, comm_sms=20,
                sms=132, c0=20)
    _fig, tiles, _t = model.explore(model.ModelInputs(**base))  # type: ignore[arg-type]
    text = _text(tiles)
    assert "as measured" not in text and "simulated" in text.lower()
    for bad, field, words in ((dict(pp=None), "pp", "from 2 to 64"),
                              (dict(pp=0), "pp", "from 2 to 64"),
                              (dict(pp=7), "pp", "even number"),
                              (dict(mb=10), "mb", "at least 16"),
                              (dict(w=3), "w", "cannot exceed"),
                              (dict(f=-1), "f", "from 0")):
        inputs = model.ModelInputs(**{**base, **bad})  # type: ignore[arg-type]
        errors = model.field_errors(inputs)
        assert field in errors and words in errors[field], (bad, errors)
        _fig, msg, _t = model.explore(inputs)
        shown = _text(msg)
        assert "--" not in shown and "int()" not in shown and "NoneType" not in shown, shown


def test_comparison_shows_deltas_better_or_worse(svc: DataService) -> None:
    th = dict(overview.DEFAULT_THRESHOLDS)
    a = overview.compute(svc, SYN, None, th)
    b = overview.compute(svc, REF, None, th)
    rows = {d.label: d for d in deltas(a, b)}
    assert rows["step time (median)"].verdict == "worse" and rows["step time (median)"].change > 5
    assert rows["stragglers"].verdict == "better"
    assert rows["NVLink share of peak"].verdict == ""  # the CPU run has no NVLink
    out = overview.render(svc, _clock(svc, SYN, compare=REF), None, None, None)
    panel = out[7]
    assert "▼ worse" in _text(panel) and "▲ better" in _text(panel)
    names = [t.name for t in out[2].data]
    assert any(REF in (n or "") for n in names) and any(SYN in (n or "") for n in names)
    assert {t.name for t in out[3].data} == {SYN, REF}  # bubble per position, both runs
    loss = experts.render(svc, _clock(svc, REF, compare=SYN), 0)[4]
    assert {t.name for t in loss.data} == {REF, SYN}
    kpis = _text(sms.render(svc, _clock(svc, SYN, compare=REF), "all")[0])
    assert f"{REF}: n/a" in kpis
