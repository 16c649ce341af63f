"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium, installed by the
README's test command; never downloaded by Playwright), headless, against the app served on
loopback by a thread of this test module. Screenshots of every page go to tests/artifacts/."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profiler.manifest import Manifest, Parallel
from profiler.store import RunWriter

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
ARTIFACTS = ROOT / "tests" / "artifacts"
SYN = "synthetic-dsv3-pp16-ep64"
REF = "reference-cpu-pp2-ep2-dualpipev"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from dashboard.app import create_app

    runs = tmp_path_factory.mktemp("runs")
    for name in (SYN, REF):
        (runs / name).symlink_to(SAMPLES / name, target_is_directory=True)
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "manifest.json").write_text('{"schema_version": 1, "source": "pro')
    live = LiveRun(runs / "live-writer")
    live.append_step()
    app = create_app(runs, live_interval_ms=500, live_reload_s=0.2)
    app._dualscope.warm()  # type: ignore[attr-defined]  # analyse the samples once, up front
    srv = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield {"url": f"http://127.0.0.1:{srv.server_port}", "live": live}
    finally:
        srv.shutdown()
        live.w.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1680, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(45_000)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    ctx.close()


def _shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# page -> (path, selector that proves the page drew its data)
PAGES = {
    "runs": ("/", f"#runs-table a:has-text('{SYN}')"),
    "overview": (f"/overview?run={SYN}", "#ov-kpis .kpi-value"),
    "timeline": (f"/timeline?run={SYN}", "#tl-graph .ytick text"),
    "links": (f"/links?run={SYN}", "#lk-nvl-heat .heatmaplayer, #lk-nvl-heat .hm image"),
    "sms": (f"/sms?run={SYN}", "#sm-kpis .kpi-value"),
    "model": (f"/model?run={SYN}", "#md-fig .bars .point"),
    "experts": (f"/experts?run={SYN}", "#ex-kpis .kpi-value"),
    "experts-reference": (f"/experts?run={REF}", "#ex-kpis .kpi-value"),
}


def test_every_page_loads_the_samples_without_console_errors(site: dict[str, Any], page: Any) -> None:
    for name, (path, selector) in PAGES.items():
        page.goto(site["url"] + path)
        page.wait_for_selector(selector, state="attached")
        page.wait_for_timeout(300)  # let plotly finish drawing before the screenshot
        assert page.locator("#error-card").count() == 0, name
        _shot(page, name)
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
    page.goto(site["url"] + "/timeline?run=live-writer")
    page.wait_for_selector("#mode-badge:has-text('LIVE')")
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
