"""Deep links (issue 10, item 6; dashboard/deeplink.py): the URL forms of each page's view."""

from __future__ import annotations

import pandas as pd
import pytest
from dash.exceptions import PreventUpdate

from dashboard.deeplink import (
    born,
    fmt_window,
    parse_window,
    search_of,
    step_param,
    step_value,
    sync,
    with_view,
)
from dashboard.overview_model import straggler_view, with_worst_step
from dashboard.pages.timeline import url_params


def test_search_forms() -> None:
    assert search_of({"step": "3", "run": "r", "compare": None, "ranks": "pipeline:1"}) == \
        "?run=r&step=3&ranks=pipeline:1"
    assert search_of({}) == ""
    # the page's own parameters replace the old ones; run and compare stay; others go
    assert with_view("?run=r&compare=c&node=n1&step=4", "/timeline",
                     {"ranks": "all", "step": "live", "t": None}) == \
        "?run=r&compare=c&ranks=all&step=live"
    assert with_view("?run=r", "/links", {"node": "node 2"}) == "?run=r&node=node+2"


def test_sync_writes_only_what_changed() -> None:
    params = url_params("pipeline:1", "step:2", [0.1, 0.2])
    assert params == {"ranks": "pipeline:1", "step": "2", "t": None}
    assert sync("/timeline", "?run=r", "/timeline", params) == (
        "?run=r&ranks=pipeline:1&step=2", "/timeline?run=r&ranks=pipeline:1&step=2")
    with pytest.raises(PreventUpdate):  # the URL says it already
        sync("/timeline", "?run=r&ranks=pipeline:1&step=2", "/timeline", params)
    with pytest.raises(PreventUpdate):  # another page is shown
        sync("/links", "?run=r", "/timeline", params)
    drawn = born({"run": "r"}, params)
    with pytest.raises(PreventUpdate):  # the defaults of a page opened from ?run=r
        sync("/timeline", "?run=r", "/timeline", params, drawn)
    other = url_params("all", "step:2", None)  # the user changed a control
    assert sync("/timeline", "?run=r", "/timeline", other, drawn)[0] == \
        "?run=r&ranks=all&step=2"
    zoomed = url_params("all", None, [1.25, 1.5])
    assert zoomed["t"] == "1.25,1.5" and zoomed["step"] is None


def test_values() -> None:
    assert parse_window("1.5,2") == [1.5, 2.0]
    for bad in (None, "", "2,1", "a,b", "1", "1,2,3", "0,1e12"):
        assert parse_window(bad) is None, bad
    assert fmt_window([1.0, 2.5]) == "1,2.5" and fmt_window(None) is None
    assert [step_value(x) for x in ("12", "live", "all", "x", None)] == [
        "step:12", "live", "all", None, None]
    assert [step_param(x) for x in ("step:12", "live", None)] == ["12", "live", None]


def test_straggler_view_names_pipeline_and_worst_step() -> None:
    spans = pd.DataFrame({"rank": [5, 5, 5, 6], "step": [0, 1, 1, 1], "op": ["F", "F", "B", "F"],
                          "start_ns": [0, 100, 200, 100], "end_ns": [50, 190, 900, 120]})
    st = pd.DataFrame({"rank": [5], "pipeline": pd.array([2], dtype="Int64"),
                       "worst_op": ["F"], "z_max": [4.0]})
    out = with_worst_step(st, spans)
    assert out is not None and int(out["worst_step"].iloc[0]) == 1  # F: 90 ns in step 1
    assert straggler_view(out.iloc[0]) == (("ranks", "pipeline:2"), ("step", "1"))
    assert with_worst_step(st.iloc[:0], spans) is not None
