"""Figure builders: pure DataFrame -> Figure functions, checked without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash._utils import to_json

from dashboard.aggregate import CAT, Window, rows_for
from dashboard.figures import (
    bubble_attribution_figure,
    bubble_compare_figure,
    empty_figure,
    expert_heatmap_figure,
    exposed_comm_figure,
    lines_figure,
    link_heatmap_figure,
    link_lines_figure,
    phase_bars_figure,
    schedule_figure,
    sm_area_figure,
    sm_seconds_figure,
    step_time_figure,
    timeline_figure,
)


def _spans(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(0, 1, n))
    y = rng.integers(0, 6, n).astype(np.int32)
    return pd.DataFrame({"y": y,
                         "cat": rng.choice([CAT["F"], CAT["B"], CAT["dispatch"], CAT["bubble"]], n),
                         "rank": (y // 3).astype(np.int32), "step": np.zeros(n, np.int32),
                         "start_s": s, "end_s": s + 1e-3, "stage": np.zeros(n, np.int32),
                         "microbatch": np.arange(n, dtype=np.int32)})


def test_timeline_bars_have_measured_and_ideal_traces_with_hover() -> None:
    w = Window("bars", _spans(300), None, rows_for([0, 1]), 0.0, 1.0, 300)
    fig = timeline_figure(w, now_s=0.5)
    names = {t.name for t in fig.data}
    assert any("(ideal)" in n for n in names) and "F forward" in names
    assert all(isinstance(t, go.Bar) for t in fig.data)
    assert all(t.customdata is not None for t in fig.data)
    assert list(fig.layout.yaxis.range) == [5.5, -0.5]  # rank 0 on top
    assert any(s.type == "line" and s.x0 == 0.5 for s in fig.layout.shapes)
    ticks = list(fig.layout.yaxis.ticktext)
    assert "<b>rank 0</b>" in ticks[0] and "ideal" in ticks[2]


def test_timeline_segments_are_webgl_and_small() -> None:
    n = 40_000
    w = Window("segments", _spans(n), None, rows_for([0, 1]), 0.0, 1.0, n)
    fig = timeline_figure(w)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    total = sum(len(t.x) for t in fig.data)
    assert total == 3 * n  # start, end, gap per span
    payload = len(to_json(fig))
    assert payload < 5e6, payload


def test_timeline_heatmap_encodes_row_kind() -> None:
    rows = rows_for([0, 1])
    heat = pd.DataFrame(np.full((6, 100), 0.5, np.float32), columns=np.linspace(0, 1, 100))
    fig = timeline_figure(Window("heatmap", pd.DataFrame(), heat, rows, 0, 1, 10**6))
    (hm,) = fig.data
    z = np.asarray(hm.z)
    np.testing.assert_allclose(z[:, 0], [0.5, 2.5, 4.5, 0.5, 2.5, 4.5])
    assert np.asarray(hm.customdata).dtype == np.uint8
    assert len(to_json(fig)) < 1e6


def test_figures_use_a_small_template() -> None:
    fig = empty_figure("nothing")
    assert len(to_json(fig)) < 3000
    assert fig.layout.paper_bgcolor == "#111821"


def test_the_one_constructor_layout_is_what_update_layout_gives() -> None:
    """``fig`` gives its whole layout to one constructor call (update_layout checks every
    key's path: ~4x slower); the figure is the one the update calls made, nested keys merged
    into the dashboard's defaults, not replacing them."""
    from dashboard.figures.base import _LAYOUT, fig
    from dashboard.palette import DIM

    def by_updates(title: str | None, **layout: object) -> go.Figure:
        f = go.Figure(layout=_LAYOUT)
        if title:
            f.update_layout(title=dict(text=title, x=0.01, xanchor="left", y=1,
                                       yref="container", yanchor="top", pad=dict(t=8),
                                       font=dict(size=13, color=DIM)),
                            margin=dict(l=64, r=18, t=60, b=40))
        f.update_layout(**layout)
        return f

    for title, layout in ((None, {}), ("Step time", {"height": 260, "barmode": "stack"}),
                          ("x", {"margin": {"r": 170}, "xaxis": {"range": [0, 1]},
                                 "legend": {"orientation": "v"}, "uirevision": "u"})):
        assert fig(title, **layout).to_plotly_json() == by_updates(title, **layout).to_plotly_json()
    made = empty_figure("nothing to draw", height=300, title="t").to_plotly_json()
    f = by_updates("t", height=300)
    f.update_xaxes(visible=False)
    f.update_yaxes(visible=False)
    f.add_annotation(text="nothing to draw", showarrow=False, font=dict(color=DIM, size=13),
                     xref="paper", yref="paper", x=0.5, y=0.5)
    assert made == f.to_plotly_json()
    assert made["layout"]["xaxis"]["gridcolor"] == _LAYOUT["xaxis"]["gridcolor"]


def test_overview_figures() -> None:
    steps = pd.DataFrame({"step": [0, 1, 2], "step_time_s": [1.0, 1.0, 1.5]})
    fig = step_time_figure(steps)
    assert list(fig.data[0].marker.color)[2] != list(fig.data[0].marker.color)[0]  # slow step
    assert step_time_figure(steps.iloc[:0]).layout.annotations[0].text == "no complete step yet"
    measured = pd.DataFrame({"pp_rank": [0, 1], "bubble_ratio_mean": [0.2, 0.1],
                             "bubble_ratio_max": [0.3, 0.2]})
    ideal = pd.DataFrame({"pp_rank": [0, 1], "bubble_ratio": [0.1, 0.1]})
    assert len(bubble_compare_figure(measured, ideal, 0.1).data) == 2
    att = pd.DataFrame({"pp_rank": [0, 1], "window_ns": [100.0, 100.0],
                        "measured_bubble_ns": [20.0, 12.0], "ideal_bubble_ns": [10.0, 10.0],
                        "slow_stage_ns": [6.0, 1.0], "exposed_comm_ns": [3.0, 0.5],
                        "host_gap_ns": [1.0, 0.5]})
    f = bubble_attribution_figure(att)
    bars = [t for t in f.data if isinstance(t, go.Bar)]
    total = sum(np.asarray(t.y) for t in bars)
    np.testing.assert_allclose(total, [0.2, 0.12])  # the parts add up to the measured bubble
    ov = pd.DataFrame({"rank": [0, 1], "overlapped_ns": [1e6, 2e6], "exposed_comm_ns": [1e6, 0]})
    assert len(exposed_comm_figure(ov, 2).data) == 2
    # ranks without any communication time: a panel that says so, not two empty bar series
    # on an axis of -1..1 ms (seen on a live run's first step)
    none = exposed_comm_figure(ov.assign(overlapped_ns=0.0, exposed_comm_ns=0.0), 1)
    assert not none.data and "no communication time" in none.layout.annotations[0].text


def test_link_and_sm_figures() -> None:
    wide = pd.DataFrame([[0.1, 0.9], [0.5, 0.4]], index=["node0 gpu0", "node0 gpu1"],
                        columns=[0.0, 0.1])
    hm = link_heatmap_figure(wide, title="x")
    assert hm.data[0].zmax == 1 and list(hm.data[0].y) == ["node0 gpu0", "node0 gpu1"]
    long = pd.DataFrame({"t_s": [0, 1, 0, 1], "series": ["a", "a", "b", "b"],
                         "value": [1e9, 2e9, 3e9, 4e9]})
    ll = link_lines_figure(long, title="x", peak=5e9)
    assert [t["name"] for t in ll["data"]] == ["a", "b"] and ll["data"][0]["y"][1] == 2.0
    go.Figure(ll)  # a valid figure: plotly's validation accepts every property
    ph = phase_bars_figure(pd.DataFrame({"device_kind": ["ib", "nvlink"], "phase": ["dispatch"] * 2,
                                         "mean_bytes_per_s": [4e10, 1.5e11],
                                         "mean_share_of_peak": [0.8, 0.75]}))
    assert len(ph.data) == 2
    area = sm_area_figure(pd.DataFrame({"t_s": [0, 1], "comm_sms": [20, 18],
                                        "compute_sms": [100, 90]}), sms_per_gpu=132, cap=20,
                          title="x")
    assert [t.stackgroup for t in area.data] == ["sm", "sm"]
    sec = sm_seconds_figure(pd.DataFrame({"rank": [0], "comm_sm_s": [1.0], "compute_sm_s": [5.0],
                                          "idle_sm_s": [2.0]}))
    assert len(sec.data) == 3


def test_model_and_expert_figures() -> None:
    sp = pd.DataFrame({"rank": [0, 0, 1], "op": ["F", "B", "FB"], "stage": [0, 0, 1],
                       "microbatch": [0, 0, 1], "start": [0.0, 1.0, 1.0], "end": [1.0, 3.0, 4.0]})
    fig = schedule_figure(sp, title="x")
    assert {t.name for t in fig.data} == {"F forward", "B backward", "F&B overlapped"}
    wide = pd.DataFrame([[10.0, 20.0], [30.0, 20.0]], index=[0, 1], columns=[0, 1])
    hm = expert_heatmap_figure(wide, title="x")
    np.testing.assert_allclose(np.asarray(hm.data[0].z), [[0.5, 1.0], [1.5, 1.0]])
    assert "no per-expert" in expert_heatmap_figure(pd.DataFrame(), title="x").layout.annotations[0].text
    lf = lines_figure(pd.DataFrame({"x": [0, 1], "series": ["loss", "loss"], "value": [2.0, 1.0]}),
                      title="Loss")
    assert len(lf.data) == 1
