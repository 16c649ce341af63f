"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium, installed by the
README's test command; never downloaded by Playwright), headless, against the app served on
loopback by a thread of this test module. Screenshots of every page go to tests/artifacts/.

Every page, on both samples and a live run, is checked as drawn: no console error, no KPI text
overflowing its tile, every two legend colours of a figure at least CIEDE2000
:data:`~browser.colorsafety.MIN_DELTA_E` apart for normal vision and under simulated
deuteranopia and protanopia; hovers name their fields; a folder of good and damaged runs
shows CORRUPT rows and cards and serves the good runs unchanged."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.colorsafety import KINDS, MIN_DELTA_E, closest_pairs
from browser.damage import DAMAGED, make_runs
from dashboard.palette import PANEL
from profiler.manifest import Manifest, Parallel
from profiler.store import RunWriter

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
ARTIFACTS = ROOT / "tests" / "artifacts"
SYN = "synthetic-dsv3-pp16-ep64"
REF = "reference-cpu-pp2-ep2-dualpipev"

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api")


class LiveRun:
    """A run a writer keeps appending to during the test (two ranks, F/B actions)."""

    def __init__(self, path: Path) -> None:
        self.w = RunWriter(path, Manifest(source="probe", description="written during the test",
                                          parallel=Parallel(world_size=2, pp=2)),
                           rotate_s=3600, flush_s=0, fsync=False)
        self.t = 0
        self.step = 0
        self.rows = 0

    def append_step(self) -> None:
        rows: dict[str, list[Any]] = {k: [] for k in ("rank", "lane", "kind", "name", "step",
                                                     "stage", "microbatch", "op", "start_ns",
                                                     "end_ns")}
        for r in (0, 1):
            t = self.t + r * 1_000_000
            for mb in range(4):
                for op, dur in (("F", 1_000_000), ("B", 2_000_000)):
                    for k, v in (("rank", r), ("lane", "compute"), ("kind", "action"),
                                 ("name", f"{r}{op}{mb}"), ("step", self.step), ("stage", r),
                                 ("microbatch", mb), ("op", op), ("start_ns", t),
                                 ("end_ns", t + dur)):
                        rows[k].append(v)
                    t += dur
        self.w.write_spans(rows)
        self.w.flush()
        self.rows += len(rows["rank"])
        self.t += 14_000_000
        self.step += 1


class _Server:
    """The app over ``runs`` served on loopback by a thread."""

    def __init__(self, runs: Path, *, warm: bool = True, **kw: Any) -> None:
        import logging

        from werkzeug.serving import make_server

        from dashboard.app import create_app

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.app = create_app(runs, **{"live_interval_ms": 500, "live_reload_s": 0.2, **kw})
        if warm:
            self.app._dualscope.warm()  # type: ignore[attr-defined]  # analyse runs up front
        self.srv = make_server("127.0.0.1", 0, self.app.server, threaded=True)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    runs = make_runs(tmp_path_factory.mktemp("site") / "runs", damaged=False)
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "manifest.json").write_text('{"schema_version": 1, "source": "pro')
    live = LiveRun(runs / "live-writer")
    live.append_step()
    server = _Server(runs)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield {"url": server.url, "live": live}
    finally:
        server.srv.shutdown()
        live.w.close()


def _shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# page -> (path, selector that proves the page drew its data)
PAGES = {
    "runs": ("/", f"#runs-table a:has-text('{SYN}')"),
    "overview": (f"/overview?run={SYN}", "#ov-kpis .kpi-value"),
    "timeline": (f"/timeline?run={SYN}", "#tl-status:has-text('drawn as segments')"),
    "timeline-reference": (f"/timeline?run={REF}", "#tl-status:has-text('drawn as bars')"),
    "gpus": (f"/gpus?run={SYN}", "#gp-status:has-text('64 GPUs')"),
    "links": (f"/links?run={SYN}", "#lk-nvl-heat .heatmaplayer, #lk-nvl-heat .hm image"),
    "sms": (f"/sms?run={SYN}", "#sm-kpis .kpi-value"),
    "model": (f"/model?run={SYN}", "#md-fig .bars .point"),
    "experts": (f"/experts?run={SYN}", "#ex-kpis .kpi-value"),
    "experts-reference": (f"/experts?run={REF}", "#ex-kpis .kpi-value"),
    "overview-reference": (f"/overview?run={REF}", "#ov-kpis .kpi-value"),
    "links-reference": (f"/links?run={REF}", ".links-page .empty-title"),
    "sms-reference": (f"/sms?run={REF}", ".sms-page .empty-title"),
    "model-reference": (f"/model?run={REF}", "#md-fig .bars .point"),
    "overview-compare": (f"/overview?run={SYN}&compare={REF}", "#ov-compare .delta-change"),
    "overview-live": ("/overview?run=live-writer", "#ov-kpis .kpi-value"),
    "timeline-live": ("/timeline?run=live-writer", "#tl-graph .ytick text"),
}

#: the swatch colour of every legend entry of every figure on the page, as drawn
_LEGENDS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: (gd.closest('[id]') || {}).id || '',
  items: Array.from(gd.querySelectorAll('g.legend g.traces')).map(tr => {
    const name = (tr.querySelector('text.legendtext') || {}).textContent || '';
    for (const p of tr.querySelectorAll('g.layers path')) {
      const cs = getComputedStyle(p);
      const op = parseFloat(cs.opacity || '1');
      const fo = parseFloat(cs.fillOpacity || '1') * op;
      const so = parseFloat(cs.strokeOpacity || '1') * op;
      if (cs.fill && cs.fill !== 'none' && fo > 0 && !/^rgba\\(.*, 0\\)$/.test(cs.fill))
        return [name, cs.fill, fo];
      if (cs.stroke && cs.stroke !== 'none' && so > 0 && parseFloat(cs.strokeWidth) > 0)
        return [name, cs.stroke, so];
    }
    return [name, null, 0];
  })
}))"""


def _alpha(color: str, opacity: float) -> str:
    """A computed CSS colour with an extra opacity, as rgba()."""
    nums = [float(v) for v in re.findall(r"[\d.]+", color)]
    a = (nums[3] if len(nums) > 3 else 1.0) * opacity
    return f"rgba({nums[0]:.0f},{nums[1]:.0f},{nums[2]:.0f},{a:.3f})"


def check_legends(pg: Any, where: str) -> int:
    """Every two legend colours of each figure differ by at least MIN_DELTA_E (CIEDE2000) for
    normal vision and under deuteranopia and protanopia; returns the pairs checked."""
    checked = 0
    for graph in pg.evaluate(_LEGENDS_JS):
        items = [(name, _alpha(c, o)) for name, c, o in graph["items"] if c]
        assert len(items) == len(graph["items"]), (where, graph["id"], graph["items"])
        if len(items) < 2:
            continue
        worst = closest_pairs(items, kinds=KINDS, background=PANEL)[0]
        assert worst[0] >= MIN_DELTA_E, (
            f"{where} #{graph['id']}: legend '{worst[2]}' and '{worst[3]}' differ by only "
            f"{worst[0]:.1f} under {worst[1]}")
        checked += len(items) * (len(items) - 1) // 2
    return checked


def check_kpis(pg: Any, where: str) -> None:
    """No KPI tile's text overflows its tile (nothing cut off, nothing hidden)."""
    over = pg.evaluate("""() => Array.from(document.querySelectorAll(
        '.kpi, .kpi-label, .kpi-value, .kpi-sub')).filter(e => e.scrollWidth > e.clientWidth + 1
        || e.scrollHeight > e.clientHeight + 1).map(e => e.className + ': ' + e.textContent)""")
    assert over == [], (where, over)


#: where a span, heatmap cell or link hovers: trace / point picked in the browser
_POINT_JS = """([id, pick]) => {
  const el = document.getElementById(id);
  const gd = el && (el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot'));
  if (!gd || !gd._fullLayout || !gd._fullData) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  const [lo, hi] = xa.range;
  for (const t of gd._fullData) {
    if (!(t.hovertemplate || '').includes(pick) || t.hoverinfo === 'skip') continue;
    const n = t.x ? t.x.length : 0;
    for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 40))) {
      const x = t.type === 'bar' ? t.base[i] + t.x[i] / 2 : t.x[i];
      if (!(x > lo + (hi - lo) * 0.05 && x < hi - (hi - lo) * 0.05)) continue;
      const y = t.type === 'heatmap' ? ya.d2p(t.y[Math.floor(t.y.length / 2)]) : ya.d2p(t.y[i]);
      window.scrollBy(0, box.top + ya._offset + y - window.innerHeight / 2);  // into view
      const now = gd.getBoundingClientRect();
      return [now.left + xa._offset + xa.d2p(x), now.top + ya._offset + y];
    }
  }
  return null;
}"""


def _hover(pg: Any, graph: str, pick: str) -> str:
    """Move the mouse onto a point of the trace of ``graph`` whose hover has ``pick``; the
    hover text shown."""
    xy = pg.wait_for_function(_POINT_JS, arg=[graph, pick], timeout=20_000).json_value()
    pg.mouse.move(2, 2)  # off the figure: the last hover label goes
    pg.wait_for_selector(f"#{graph} .hoverlayer .hovertext", state="detached", timeout=10_000)
    pg.mouse.move(xy[0] + 1, xy[1] + 1)
    pg.mouse.move(*xy)
    label = pg.wait_for_selector(f"#{graph} .hoverlayer .hovertext", state="attached",
                                 timeout=10_000)
    text = label.evaluate("el => Array.from(el.querySelectorAll('tspan.line')).map("
                          "t => t.textContent).join(' ') || el.textContent")
    return " ".join(str(text).split())


_SECONDS_7 = re.compile(r"\d\.\d{5,}")  # no 7-decimal seconds (nor 5)


_SPAN_HOVER = re.compile(r"rank \d+ · step -?\d+ .*stage \d+ · micro-batch \d+ .*start [\d.]+ s · "
                         r"duration [\d.]+[µmn]?s")


def check_span_hover(pg: Any, where: str) -> None:
    """A span's hover names rank, step, stage, micro-batch, start and duration with units, in
    at most 4 significant digits."""
    text = _hover(pg, "tl-graph", "micro-batch")
    assert _SPAN_HOVER.search(text) and not _SECONDS_7.search(text), (where, text)


def check_phase_hover(pg: Any, where: str) -> None:
    text = _hover(pg, "tl-graph", "idle in warm-up")  # a phase boundary tick
    assert re.search(r"rank \d+ · step \d+ at [\d.]+ s idle in warm-up [\d.]+[µmn]?s", text), \
        (where, text)


def check_timeline_heatmap_hover(pg: Any, where: str) -> None:
    """The whole cluster sample is a busy-fraction heatmap: its hover names row and time."""
    pg.locator("#tl-ranks").click()
    pg.get_by_text("all ranks (64)", exact=True).click()
    pg.locator("#tl-step").click()
    pg.get_by_text("whole run", exact=True).click()
    pg.wait_for_selector("#tl-status:has-text('drawn as heatmap')")
    text = _hover(pg, "tl-graph", "busy")
    assert re.search(r"rank \d+( · (comm|ideal))? t [\d.]+ s busy \d+%", text), (where, text)
    assert not _SECONDS_7.search(text), text


def check_link_hover(pg: Any, where: str) -> None:
    text = _hover(pg, "lk-ib-heat", "of peak")
    assert re.search(r"node\d+ mlx5_\d+:\d+ \(HCA port\) t [\d.]+ s \d+% of peak", text), \
        (where, text)


def check_narrow(pg: Any, where: str) -> None:
    """On a 1024 px screen the KPI tiles wrap instead of cutting their text."""
    pg.set_viewport_size({"width": 1024, "height": 900})
    try:
        pg.wait_for_timeout(200)
        check_kpis(pg, f"{where} at 1024 px")
        _shot(pg, f"{where}-narrow")
    finally:
        pg.set_viewport_size({"width": 1680, "height": 1000})


#: page -> checks beyond console errors, KPI overflow and legend colours
CHECKS = {
    "timeline": (check_span_hover, check_timeline_heatmap_hover),
    "timeline-reference": (check_span_hover, check_phase_hover),
    "links": (check_link_hover,),
    "overview": (check_narrow,),
    "overview-reference": (check_narrow,),
}


def test_every_page_loads_the_samples_without_console_errors(site: dict[str, Any], page: Any) -> None:
    """Every page on both samples, a live run and a comparison: drawn without console errors,
    KPI text inside its tiles, legend colours apart for colour-blind readers; hovers name
    their fields (CHECKS)."""
    pairs = 0
    for name, (path, selector) in PAGES.items():
        page.goto(site["url"] + path)
        page.wait_for_selector(selector, state="attached")
        page.wait_for_timeout(300)  # let plotly finish drawing before the screenshot
        assert page.locator("#error-card").count() == 0, name
        pairs += check_legends(page, name)
        check_kpis(page, name)
        _shot(page, name)
        for check in CHECKS.get(name, ()):
            check(page, name)
    assert page.errors == []
    assert pairs > 100  # the legends were there to check


def test_model_form_marks_invalid_fields_with_their_range(site: dict[str, Any], page: Any) -> None:
    page.goto(site["url"] + f"/model?run={REF}")
    page.wait_for_selector("#md-fig .bars .point", state="attached")
    pp = page.locator("#md-pp")
    for value, field, expect in (("0", "PP ranks", "from 1 to 64"), ("", "PP ranks", "from 1 to 64"),
                                 ("5", "micro-batches", "at least 10")):
        pp.fill(value)
        pp.press("Enter")
        page.wait_for_function(
            "([f, e]) => { const b = document.querySelector('#md-errors .error-inline');"
            " return b && b.innerText.includes(f) && b.innerText.includes(e); }",
            arg=[field, expect])
        text = page.locator("#md-errors").inner_text()
        assert "--" not in text and "int()" not in text and "NoneType" not in text, text
        cid = "#md-pp" if field == "PP ranks" else "#md-mb"
        assert "invalid" in (page.locator(cid).locator("xpath=..").get_attribute("class") or "")
    _shot(page, "model-invalid")
    pp.fill("2")
    pp.press("Enter")
    page.wait_for_selector("#md-errors .error-inline", state="detached")
    assert "invalid" not in (pp.locator("xpath=..").get_attribute("class") or "")
    assert page.errors == []


def test_timeline_shows_measured_and_ideal_rows(site: dict[str, Any], page: Any) -> None:
    page.goto(site["url"] + f"/timeline?run={REF}")
    page.wait_for_selector("#tl-graph .ytick text")
    labels = page.locator("#tl-graph .ytick text").all_text_contents()
    assert labels.count("ideal") == 4 and labels.count("comm") == 4
    assert "rank 0" in labels and "rank 3" in labels
    assert labels.index("rank 0") + 2 == labels.index("ideal")  # ideal right beneath rank 0
    legend = " ".join(page.locator("#tl-graph .legendtext").all_text_contents())
    assert "F&B overlapped" in legend and "bubble" in legend
    assert "drawn as bars" in page.locator("#tl-status").inner_text()
    _shot(page, "timeline-reference")


def test_replay_advances(site: dict[str, Any], page: Any) -> None:
    page.goto(site["url"] + f"/overview?run={REF}")
    page.wait_for_selector("#ov-kpis .kpi-value")
    page.click("#replay-toggle")
    page.wait_for_selector("#mode-badge:has-text('REPLAY')")
    label = page.locator("#clock-label")
    page.wait_for_function("() => /^[0-9.]+ \\//.test(document.querySelector('#clock-label').innerText)")
    first = float(label.inner_text().split("/")[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        now = float(label.inner_text().split("/")[0])
        if now > first:
            break
    assert now > first, (first, now)
    _shot(page, "replay-overview")
    page.click("a.nav-link:has-text('Timeline')")  # in-app navigation keeps the replay clock
    page.wait_for_selector("#mode-badge:has-text('REPLAY')")
    page.wait_for_selector("#tl-graph .ytick text")
    _shot(page, "replay-timeline")


def test_live_mode_picks_up_spans_a_writer_appends(site: dict[str, Any], page: Any) -> None:
    live: LiveRun = site["live"]
    page.goto(site["url"] + "/timeline?run=live-writer&step=all")  # the whole run grows
    # a writer attached (the manifest says live): LIVE, or STALE when its last step is older
    # than the freshness limit (the module's other tests ran meanwhile)
    page.wait_for_selector("#mode-badge.badge-live, #mode-badge.badge-stale")
    status = page.locator("#tl-status")

    def spans_shown() -> int:
        m = re.match(r"([\d,]+) spans", status.inner_text())
        return int(m.group(1).replace(",", "")) if m else -1

    page.wait_for_selector("#tl-status:has-text('spans in window')")
    before = spans_shown()
    assert before > 0
    live.append_step()
    live.append_step()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and spans_shown() <= before:
        page.wait_for_timeout(300)
    assert spans_shown() > before
    page.wait_for_selector("#mode-badge:has-text('LIVE')")  # new data: live again
    _shot(page, "live-timeline")


def test_corrupt_run_shows_the_error_card_and_the_app_keeps_working(
        site: dict[str, Any], page: Any) -> None:
    page.goto(site["url"] + "/overview?run=corrupt")
    card = page.wait_for_selector("#error-card")
    assert "cannot be read" in card.inner_text() and "manifest.json" in card.inner_text()
    _shot(page, "corrupt-run")
    page.click("a.nav-link:has-text('Runs')")
    page.wait_for_selector(f"#runs-table a:has-text('{REF}')")
    assert "CORRUPT" in page.locator("#runs-table").inner_text()
    page.goto(site["url"] + "/timeline?run=../../etc")
    assert "not a run name" in page.wait_for_selector("#error-card").inner_text()
    assert page.errors == []


def test_chromium_is_debians(site: dict[str, Any]) -> None:
    assert shutil.which("chromium") or Path(CHROMIUM).exists()


@pytest.fixture(scope="module")
def mixed_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A runs folder with the reference sample beside bit-flipped, type-wrong and otherwise
    damaged copies of it (tests/browser/damage.py), served with the warm-up that reads them."""
    runs = make_runs(tmp_path_factory.mktemp("mixed") / "runs", good=(REF,))
    server = _Server(runs)
    try:
        yield server.url, runs
    finally:
        server.srv.shutdown()


def test_a_folder_of_good_and_damaged_runs(site: dict[str, Any],
                                           mixed_site: tuple[str, Path], page: Any) -> None:
    url, runs = mixed_site
    page.goto(url + "/")
    page.wait_for_selector(f"#runs-table a:has-text('{REF}')")
    table = page.locator("#runs-table").inner_text()
    assert table.count("CORRUPT") == len(DAMAGED), table
    for where in DAMAGED.values():
        assert where in table, where
    assert str(runs) not in page.content() and str(runs.parent) not in page.content()
    _shot(page, "mixed-runs")
    for run in ("bitflip-spans", "manifest-wrong-type", "segment-is-a-dir"):
        page.goto(url + f"/timeline?run={run}")
        card = page.wait_for_selector("#error-card").inner_text()
        assert DAMAGED[run] in card and str(runs) not in card, card
        assert "CORRUPT" in page.locator("#header-run").inner_text()
    _shot(page, "mixed-corrupt-card")

    def shown(base: str) -> tuple[str, str]:
        page.goto(base + f"/overview?run={REF}")
        page.wait_for_selector("#ov-kpis .kpi-value")
        kpis = page.locator("#ov-kpis").inner_text()
        page.goto(base + f"/timeline?run={REF}")
        page.wait_for_selector("#tl-status:has-text('spans in window')")
        return kpis, page.locator("#tl-status").inner_text().rsplit(" · ", 1)[0]

    assert shown(url) == shown(site["url"])  # the good run is unchanged by its neighbours
    assert page.errors == []
