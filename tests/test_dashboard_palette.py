"""The colour system (dashboard/palette.py): colour-blind safety, contrast on the dark theme,
status colours kept apart from data, and the stylesheet declaring the same colours."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser.colorsafety import (
    KINDS,
    MIN_DELTA_E,
    closest_pairs,
    contrast,
    delta_e00,
    rgb,
    simulate,
)

from dashboard import palette

ROOT = Path(__file__).resolve().parent.parent
CVD = KINDS


def test_colour_math_matches_published_values() -> None:
    assert contrast("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    # a red and a green that deuteranopes confuse collapse under the simulation
    red, green = rgb("#d62728"), rgb("#2ca02c")
    assert delta_e00(red, green) > 40
    assert delta_e00(simulate(red, "deuteranopia"), simulate(green, "deuteranopia")) < 15


@pytest.mark.parametrize("family", sorted(palette.FAMILIES))
def test_each_family_is_distinct_for_colour_blind_readers(family: str) -> None:
    colors = palette.FAMILIES[family]
    worst = closest_pairs(colors, kinds=CVD, background=palette.PANEL)[0]
    assert worst[0] >= MIN_DELTA_E, f"{family}: {worst[2]} vs {worst[3]} differ by only " \
                                    f"{worst[0]:.1f} under {worst[1]}"


def test_ops_and_comm_kinds_are_not_the_old_near_twins() -> None:
    # issue 16: B, I and dispatch were #34d399 / #2dd4bf / #22d3ee
    t = palette.TIMELINE
    for a, b in (("B", "I"), ("I", "dispatch"), ("B", "dispatch"), ("F", "FB")):
        for kind in CVD:
            d = delta_e00(simulate(rgb(t[a]), kind), simulate(rgb(t[b]), kind))
            assert d >= MIN_DELTA_E, (a, b, kind, d)


def test_data_colours_have_contrast_on_the_dark_theme() -> None:
    data = {f"{f}:{k}": c for f, fam in palette.FAMILIES.items() for k, c in fam.items()}
    data.pop("sm:idle")  # idle SM-time is the background on purpose
    for name, c in data.items():
        assert contrast(c, palette.PANEL) >= 2.5, name
    # text: WCAG AA (4.5:1) for body and dim text, on the page and on panels
    for fg in (palette.TEXT, palette.DIM, palette.ACCENT, palette.OK, palette.WARN, palette.CRIT):
        for bg in (palette.BG, palette.PANEL, palette.PANEL_2):
            assert contrast(fg, bg) >= 4.5, (fg, bg)
    assert contrast(palette.ON_CRIT, palette.CRIT) >= 4.5  # the DEAD badge's text


def test_op_and_comm_colours_mean_nothing_else() -> None:
    """A colour of the Timeline (ops, communication kinds, bubble) appears in another family
    only where it means the same (SM: communication / compute; attribution: P2P)."""
    same_meaning = {("sm", "comm"), ("sm", "compute"), ("attribution", "p2p")}
    timeline = {c.lower() for c in palette.TIMELINE.values()}
    for fam, colors in palette.FAMILIES.items():
        if fam == "timeline":
            continue
        for key, c in colors.items():
            if (fam, key) not in same_meaning:
                assert c.lower() not in timeline, (fam, key, c)


def test_status_colours_are_never_data_colours() -> None:
    data = {c.lower() for fam in palette.FAMILIES.values() for c in fam.values()}
    for name, s in palette.STATUS.items():
        assert s.lower() not in data, name
        for c in data:
            assert delta_e00(rgb(s), rgb(c)) >= MIN_DELTA_E, (name, c)


def test_the_stylesheet_declares_the_palette() -> None:
    css = (ROOT / "dashboard" / "assets" / "style.css").read_text()
    declared = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-fA-F]{6})\s*;", css))
    for var, value in (("bg", palette.BG), ("panel", palette.PANEL), ("text", palette.TEXT),
                       ("dim", palette.DIM), ("accent", palette.ACCENT), ("ok", palette.OK),
                       ("warn", palette.WARN), ("crit", palette.CRIT), ("line", palette.GRID),
                       ("panel-2", palette.PANEL_2)):
        assert declared.get(var, "").lower() == value.lower(), var
    # and nothing in the stylesheet invents a colour outside the palette's
    hexes = {h.lower() for h in re.findall(r"#[0-9a-fA-F]{6}\b", css)}
    allowed = {v.lower() for v in vars(palette).values() if isinstance(v, str) and v.startswith("#")}
    allowed |= {c.lower() for fam in palette.FAMILIES.values() for c in fam.values()}
    extra = hexes - allowed - set(_CSS_SHADES)
    assert not extra, f"colours in style.css that dashboard/palette.py does not declare: {extra}"


#: darker shades of the panel used only for chrome (top bar, hover rows, replay bar)
_CSS_SHADES = ("#0d141c", "#1d2a38", "#17212c", "#0e1a22", "#164e5c", "#0e3a46", "#2b3a4a",
               "#052e1c", "#04222a", "#1f1500", "#5b6b7c")
