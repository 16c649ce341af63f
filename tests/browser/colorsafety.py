"""Colour checks for the dashboard's palette: colour-vision-deficiency simulation (Machado,
Oliveira & Fernandes 2009, severity 1), CIEDE2000 colour difference and WCAG 2 contrast.
Plain numpy, used by the palette unit test and the browser test's legend check."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["CVD", "MIN_DELTA_E", "KINDS", "rgb", "simulate", "delta_e00", "contrast",
           "closest_pairs"]

#: CIEDE2000 between any two series of one figure (2.3 is a just-noticeable difference; 10
#: reads as a different colour at a glance)
MIN_DELTA_E = 10.0
#: the vision the checks simulate: the two common red-green deficiencies (about 6 % of men)
KINDS = ("normal", "deuteranopia", "protanopia")

#: Machado et al. 2009, severity 1.0, on linear sRGB
CVD: dict[str, np.ndarray] = {
    "normal": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                            [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                              [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779],
                            [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}

_RGBA_RE = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)(?:\s*,\s*([\d.]+))?\s*\)")


def rgb(color: str, background: str | None = None) -> np.ndarray:
    """sRGB in 0..1 of ``#rrggbb`` or ``rgb(a)(...)``; an alpha is composited over
    ``background`` (required then)."""
    c = color.strip().lower()
    alpha = 1.0
    if c.startswith("#") and len(c) == 7:
        v = np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=float) / 255
    else:
        m = _RGBA_RE.fullmatch(c)
        if not m:
            raise ValueError(f"not a colour: {color!r}")
        v = np.array([float(m.group(i)) for i in (1, 2, 3)]) / 255
        alpha = float(m.group(4)) if m.group(4) is not None else 1.0
    if alpha < 1.0:
        if background is None:
            raise ValueError(f"{color!r} is translucent: give the background it is drawn on")
        v = alpha * v + (1 - alpha) * rgb(background)
    return v


def _linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _encode(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def simulate(c: np.ndarray, kind: str) -> np.ndarray:
    """How an sRGB colour (0..1) looks with ``kind`` (a key of :data:`CVD`)."""
    return _encode(CVD[kind] @ _linear(np.asarray(c, dtype=float)))


def _lab(c: np.ndarray) -> np.ndarray:
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ _linear(c) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e00(a: np.ndarray, b: np.ndarray) -> float:
    """CIEDE2000 difference of two sRGB colours (0..1)."""
    L1, a1, b1 = _lab(a)
    L2, a2, b2 = _lab(b)
    C1, C2 = np.hypot(a1, b1), np.hypot(a2, b2)
    Cm = (C1 + C2) / 2
    G = 0.5 * (1 - np.sqrt(Cm**7 / (Cm**7 + 25.0**7)))
    a1p, a2p = (1 + G) * a1, (1 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dLp, dCp = L2 - L1, C2p - C1p
    dh = h2p - h1p
    if C1p * C2p == 0:
        dh = 0.0
    elif dh > 180:
        dh -= 360
    elif dh < -180:
        dh += 360
    dHp = 2 * np.sqrt(C1p * C2p) * np.sin(np.radians(dh / 2))
    Lm, Cmp = (L1 + L2) / 2, (C1p + C2p) / 2
    if C1p * C2p == 0:
        hm = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hm = (h1p + h2p) / 2
    else:
        hm = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    T = (1 - 0.17 * np.cos(np.radians(hm - 30)) + 0.24 * np.cos(np.radians(2 * hm))
         + 0.32 * np.cos(np.radians(3 * hm + 6)) - 0.20 * np.cos(np.radians(4 * hm - 63)))
    dtheta = 30 * np.exp(-(((hm - 275) / 25) ** 2))
    Rc = 2 * np.sqrt(Cmp**7 / (Cmp**7 + 25.0**7))
    Sl = 1 + 0.015 * (Lm - 50) ** 2 / np.sqrt(20 + (Lm - 50) ** 2)
    Sc = 1 + 0.045 * Cmp
    Sh = 1 + 0.015 * Cmp * T
    Rt = -np.sin(np.radians(2 * dtheta)) * Rc
    return float(np.sqrt((dLp / Sl) ** 2 + (dCp / Sc) ** 2 + (dHp / Sh) ** 2
                         + Rt * (dCp / Sc) * (dHp / Sh)))


def _luminance(c: np.ndarray) -> float:
    return float(np.array([0.2126, 0.7152, 0.0722]) @ _linear(c))


def contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio (1..21) of ``fg`` drawn on ``bg``."""
    a, b = _luminance(rgb(fg, bg)), _luminance(rgb(bg))
    hi, lo = max(a, b), min(a, b)
    return (hi + 0.05) / (lo + 0.05)


def closest_pairs(colors: dict[str, str] | Sequence[tuple[str, str]], *,
                  kinds: Iterable[str] = ("normal", "deuteranopia", "protanopia"),
                  background: str | None = None) -> list[tuple[float, str, str, str]]:
    """Every pair of named colours with its smallest CIEDE2000 difference over ``kinds``:
    ``(delta_e, kind, name_a, name_b)``, closest first."""
    items = list(colors.items()) if isinstance(colors, dict) else list(colors)
    out = []
    for (na, ca), (nb, cb) in itertools.combinations(items, 2):
        a, b = rgb(ca, background), rgb(cb, background)
        worst = min((delta_e00(simulate(a, k), simulate(b, k)), k) for k in kinds)
        out.append((worst[0], worst[1], na, nb))
    return sorted(out)
