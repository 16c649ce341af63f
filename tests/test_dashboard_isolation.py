"""The dashboard isolates runs (issue 12): a folder holding good runs beside bit-flipped and
type-wrong ones. A damaged run is a CORRUPT row and an error card with the whole reason, its
paths relative to the runs folder; every page of a good run draws exactly what it draws in a
folder of good runs only; nothing raises, and the warm-up thread survives the damaged runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser.damage import DAMAGED, REF, SYN, make_runs
from dash._utils import to_json

from dashboard import ids
from dashboard.app import create_app, route
from dashboard.clock import next_clock
from dashboard.data import DataService
from dashboard.pages import experts, links, overview, runs, sms, timeline


def _text(component: Any) -> str:
    if component is None:
        return ""
    if isinstance(component, str):
        return component
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


def _find(component: Any, cid: str) -> Any:
    if getattr(component, "id", None) == cid:
        return component
    children = getattr(component, "children", None)
    for c in children if isinstance(children, (list, tuple)) else [children]:
        if c is not None and not isinstance(c, str):
            hit = _find(c, cid)
            if hit is not None:
                return hit
    return None


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("isolation")
    return make_runs(base / "clean", damaged=False), make_runs(base / "mixed")


def _clock(svc: DataService, run: str) -> Any:
    _rd, snap = svc.snapshot(run)
    return next_clock(None, "open", run_info={"run": run, "live": False, "t0_ns": snap.t0_ns,
                                              "duration_s": (snap.t1_ns - snap.t0_ns) / 1e9})


def _pages(svc: DataService, run: str) -> str:
    """Everything the pages of ``run`` send to the browser, as JSON (timings left out)."""
    c = _clock(svc, run)
    out = [overview.render(svc, c, None, None, None), overview.render_phases(svc, c),
           links.render(svc, c, None, None, None), sms.render(svc, c, "all"),
           experts.render(svc, c, 0)]
    fig, status, view, step = timeline.render(svc, c, None, "all", ["comm", "ideal"], None)
    out.append((fig, status.rsplit(" · ", 2)[0], view))
    return to_json(out)


def test_damaged_runs_are_corrupt_rows_with_relative_reasons(folders: tuple[Path, Path]) -> None:
    _clean, mixed = folders
    svc = DataService(str(mixed))
    rows = {_text(r.children[0]): r for r in runs.runs_rows(svc)}
    assert set(rows) == {SYN, REF, *DAMAGED}
    for run, where in DAMAGED.items():
        text = _text(rows[run])
        assert "CORRUPT" in text and where in text, (run, text)
    for run in (SYN, REF):
        assert "CORRUPT" not in _text(rows[run]) and "FINISHED" in _text(rows[run])
    page = to_json(runs.layout(svc, {}))
    assert str(mixed) not in page and str(mixed.parent) not in page  # no server path
    # the compare picker offers only runs that read
    pick = _find(runs.layout(svc, {}), ids.RUNS_PICK)
    assert {o["value"] for o in pick.options} == {SYN, REF}


@pytest.mark.parametrize("run", sorted(DAMAGED))
def test_every_page_of_a_damaged_run_is_an_error_card(folders: tuple[Path, Path],
                                                      run: str) -> None:
    _clean, mixed = folders
    svc = DataService(str(mixed))
    for path in ("/overview", "/timeline", "/links", "/sms", "/experts", "/model"):
        body, _nav, title = route(svc, path, f"?run={run}")
        page = to_json(body)
        assert str(mixed) not in page
        if path in ("/overview", "/model"):  # their skeletons read nothing; the render says
            continue
        assert getattr(body, "id", None) == ids.ERROR_CARD, (run, path)
        assert DAMAGED[run] in _text(body), (run, path, _text(body))
        assert "CORRUPT" in _text(title)
    clock = {"run": run, "mode": "offline"}
    out = overview.render(svc, clock, None, None, None)
    assert getattr(out[1], "id", None) == ids.ERROR_CARD and DAMAGED[run] in _text(out[1])
    for render in (lambda: links.render(svc, clock, None, None, None),
                   lambda: sms.render(svc, clock, "all"), lambda: experts.render(svc, clock, 0),
                   lambda: timeline.render(svc, clock, None, "all", [], None),
                   lambda: overview.render_phases(svc, clock)):
        assert str(mixed) not in to_json(render())


def test_good_runs_draw_the_same_beside_damaged_ones(folders: tuple[Path, Path]) -> None:
    clean, mixed = folders
    a, b = DataService(str(clean)), DataService(str(mixed))
    for damaged in DAMAGED:  # visiting the damaged runs first changes nothing either
        runs.run_summary(b, b.catalog.resolve(damaged))
    for run in (REF, SYN):
        assert _pages(a, run) == _pages(b, run), run


def test_a_damaged_run_is_not_read_again_until_it_changes(folders: tuple[Path, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _clean, mixed = folders
    svc = DataService(str(mixed))
    assert svc.read_error("bitflip-spans") is not None
    rd = svc.run("bitflip-spans")
    calls = []
    monkeypatch.setattr(rd, "_read", lambda: calls.append(1))
    assert svc.read_error("bitflip-spans") is not None and calls == []
    assert svc.known_error("bitflip-spans") == svc.read_error("bitflip-spans")


def test_the_server_survives_warm_up_over_damaged_runs(folders: tuple[Path, Path]) -> None:
    _clean, mixed = folders
    app = create_app(mixed, warm=True)
    svc: DataService = app._dualscope  # type: ignore[attr-defined]
    svc.warm()  # what the background thread does, in the foreground: it must not raise
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/_dash-layout").status_code == 200
    for run in DAMAGED:
        assert svc.known_error(run) is not None or svc.catalog.resolve(run).status == "corrupt"
