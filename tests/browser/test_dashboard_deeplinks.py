"""Deep links in a real browser (issue 10, item 6): the URL carries run, page, ranks, step,
window, node and schedule; opening a URL shows its view, changing a control updates the URL,
back / forward and a reload restore the view, and alert chips and table rows open the exact
view. Screenshots go to tests/artifacts/deeplink-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from browser.damage import REF, SYN, make_runs
from browser.test_dashboard_browser import ARTIFACTS, _Server, _shot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _Server(make_runs(tmp_path_factory.mktemp("deeplinks") / "runs", damaged=False))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield server.url
    finally:
        server.srv.shutdown()


def _q(pg: Any) -> dict[str, str]:
    url = urlparse(pg.url)
    return {"path": url.path, **{k: v[0] for k, v in parse_qs(url.query).items()}}


def _wait_q(pg: Any, **want: str) -> None:
    """Wait until the URL's query has every ``want`` (None: the key is absent)."""
    js = """(want) => { const q = new URLSearchParams(location.search);
        return Object.entries(want).every(([k, v]) => v === null ? !q.has(k) : q.get(k) === v); }"""
    pg.wait_for_function(js, arg=want, timeout=20_000)


def _shows(pg: Any, cid: str, text: str) -> None:
    pg.wait_for_function("([id, t]) => (document.getElementById(id) || {}).innerText"
                         "?.includes(t)", arg=[cid, text], timeout=30_000)


def _pick(pg: Any, cid: str, label: str) -> None:
    pg.locator(f"#{cid}").click()
    pg.get_by_role("listbox").get_by_text(label, exact=True).click()


def _timeline_shows(pg: Any, ranks: str, step: str) -> None:
    _shows(pg, "tl-ranks", ranks)
    _shows(pg, "tl-step", step)
    pg.wait_for_selector("#tl-status:has-text('spans in window')")


def test_timeline_deep_link_round_trip(samples: str, page: Any) -> None:
    """URL -> controls; a control -> URL (a new history entry); back and forward; reload."""
    page.goto(samples + f"/timeline?run={SYN}&ranks=pipeline:3&step=2")
    _timeline_shows(page, "pipeline 3 (16 ranks)", "step 2")
    assert "16 ranks" in page.locator("#tl-status").inner_text()
    _shot(page, "deeplink-timeline")
    _pick(page, "tl-ranks", "pipeline 1 (16 ranks)")
    _wait_q(page, ranks="pipeline:1", step="2", run=SYN)
    _pick(page, "tl-step", "whole run")
    _wait_q(page, ranks="pipeline:1", step="all")
    page.go_back()
    _wait_q(page, ranks="pipeline:1", step="2")
    _timeline_shows(page, "pipeline 1 (16 ranks)", "step 2")
    page.go_back()
    _wait_q(page, ranks="pipeline:3", step="2")
    _timeline_shows(page, "pipeline 3 (16 ranks)", "step 2")
    page.go_forward()
    _timeline_shows(page, "pipeline 1 (16 ranks)", "step 2")
    at = page.url
    page.reload()
    _timeline_shows(page, "pipeline 1 (16 ranks)", "step 2")
    assert page.url == at  # the reload did not rewrite the URL
    # a zoomed window travels as t=a,b and comes back on reload
    page.goto(samples + f"/timeline?run={SYN}&ranks=pipeline:0&t=0.1,0.2")
    _shows(page, "tl-ranks", "pipeline 0")
    page.wait_for_selector("#tl-status:has-text('spans in window')")
    rng = page.wait_for_function(  # once plotly has drawn the figure
        "() => { const el = document.getElementById('tl-graph');"
        " const gd = el && (el.classList.contains('js-plotly-plot') ? el"
        " : el.querySelector('.js-plotly-plot'));"
        " return gd && gd._fullLayout && gd._fullLayout.xaxis.range; }").json_value()
    assert rng == pytest.approx([0.1, 0.2], abs=1e-6), rng
    assert page.errors == []


def test_a_page_opened_without_parameters_keeps_its_url(samples: str, page: Any) -> None:
    """Defaults are not written back as a second history entry (back would loop)."""
    page.goto(samples + "/")
    page.goto(samples + f"/timeline?run={REF}")
    page.wait_for_selector("#tl-status:has-text('spans in window')")
    page.wait_for_timeout(800)
    assert _q(page) == {"path": "/timeline", "run": REF}
    page.go_back()
    page.wait_for_selector(f"#runs-table a:has-text('{REF}')")


def test_links_node_and_model_schedule_in_the_url(samples: str, page: Any) -> None:
    page.goto(samples + f"/links?run={SYN}&node=node2")
    _shows(page, "lk-node", "node2")
    _pick(page, "lk-node", "node7")
    _wait_q(page, node="node7")
    page.reload()
    _shows(page, "lk-node", "node7")
    page.goto(samples + f"/model?run={REF}&schedule=zb1p&pp=4&mb=8")
    _shows(page, "md-schedule", "zb1p")
    page.wait_for_selector("#md-fig .bars .point", state="attached")
    assert page.locator("#md-pp").input_value() == "4"
    assert page.locator("#md-mb").input_value() == "8"
    _pick(page, "md-schedule", "1f1b")
    _wait_q(page, schedule="1f1b", pp="4", mb="8")
    _shot(page, "deeplink-model")
    page.goto(samples + f"/sms?run={SYN}&gpu=5")
    _shows(page, "sm-gpu", "rank 5")
    _pick(page, "sm-gpu", "rank 6")
    _wait_q(page, gpu="6")
    page.go_back()
    _shows(page, "sm-gpu", "rank 5")
    page.goto(samples + f"/experts?run={SYN}&layer=0")
    _shows(page, "ex-layer", "MoE layer 0")
    assert _q(page) == {"path": "/experts", "run": SYN, "layer": "0"}
    assert page.errors == []


def test_alerts_and_rows_open_the_exact_view(samples: str, page: Any) -> None:
    """A straggler's alert opens its pipeline and worst step; a weak port's opens its node;
    a straggler table row does what its alert does."""
    page.goto(samples + f"/overview?run={SYN}")
    page.wait_for_selector("#ov-alerts .alert")
    alert = page.locator("#ov-alerts a.alert", has_text="Straggler: rank 37")
    target = alert.get_attribute("href") or ""
    assert re.search(r"ranks=pipeline:1&step=\d+", target), target
    alert.click()
    _wait_q(page, ranks="pipeline:1")
    assert _q(page)["path"] == "/timeline"
    step = _q(page)["step"]
    _timeline_shows(page, "pipeline 1 (16 ranks)", f"step {step}")
    labels = page.locator("#tl-graph .ytick text").all_text_contents()
    assert "rank 37" in labels, labels
    _shot(page, "deeplink-straggler")
    page.go_back()
    page.wait_for_selector("#ov-alerts .alert")
    weak = page.locator("#ov-alerts a.alert", has_text="of peak").first
    node = re.match(r"(node\d+)", weak.locator(".alert-title").inner_text()).group(1)
    weak.click()
    _wait_q(page, node=node)
    _shows(page, "lk-node", node)
    page.go_back()
    bubble = page.locator("#ov-alerts a.alert", has_text="above ideal")
    assert re.search(r"/timeline\?run=[^&]+&ranks=pipeline:\d+&step=\d+$",
                     bubble.get_attribute("href") or ""), bubble.get_attribute("href")
    row = page.locator("#ov-stragglers a", has_text="37")
    assert row.get_attribute("href") == target
    assert page.errors == []



def test_gpus_page_cell_opens_its_pipeline(samples: str, page: Any) -> None:
    """GPUs page (issue 10, item 5): every rank a cell; clicking one opens its pipeline on
    the Timeline at its worst step; the worst-ranks table links the same way."""
    page.goto(samples + f"/gpus?run={SYN}&metric=busy")
    page.wait_for_selector("#gp-status:has-text('64 GPUs')")
    page.wait_for_selector("#gp-heat .hm image, #gp-heat .heatmaplayer", state="attached")
    first = page.locator("#gp-worst a").first
    target = first.get_attribute("href") or ""
    assert re.match(rf"/timeline\?run={SYN}&ranks=pipeline:\d+&step=\d+$", target), target
    _shot(page, "gpus")
    # the middle of the cell of pipeline row 2, stage 3, by plotly's own axes
    x, y, pipe = page.evaluate("""() => { const el = document.getElementById('gp-heat');
        const gd = el.classList.contains('js-plotly-plot') ? el
            : el.querySelector('.js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, t = gd._fullData[0];
        const box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.d2p(t.x[3]), box.top + ya._offset + ya.d2p(t.y[2]),
                t.customdata[2][3][1]]; }""")
    page.mouse.move(x, y)
    hover = " ".join(page.wait_for_selector("#gp-heat .hoverlayer .hovertext").evaluate(
        "el => Array.from(el.querySelectorAll('tspan.line')).map(t => t.textContent)"))
    assert f"pipeline {pipe}" in hover and "stage 3" in hover and "worst in step" in hover, hover
    page.mouse.click(x, y)
    page.wait_for_function("() => location.pathname === '/timeline'")
    assert _q(page)["ranks"] == f"pipeline:{pipe}", (page.url, hover)
    assert _q(page)["path"] == "/timeline"
    _timeline_shows(page, f"pipeline {pipe} (16 ranks)", f"step {_q(page)['step']}")
    page.go_back()
    page.wait_for_selector("#gp-status:has-text('64 GPUs')")
    assert _q(page) == {"path": "/gpus", "run": SYN, "metric": "busy"}
    assert page.errors == []
