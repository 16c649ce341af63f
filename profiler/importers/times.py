"""Event times from their JSON text to int64 nanoseconds, exactly.

Kineto writes ``ts`` in µs with three decimals on top of epoch-sized values
(``1700000000123456.789``). A float64 holds such a number only to 0.25 µs, so parsing through
float would move events by up to ±125 ns. The importer keeps each ``ts`` as its JSON text
(``msgspec.Raw``) and converts a whole chunk at once here:

- when every value is below :data:`FAST_MAX_US` in magnitude (relative clocks, synthetic
  traces), through float64, which is exact there (``floor(us) * 1000 + round(frac * 1000)``);
- else digit by digit in numpy over the joined text: integer digits and the first three
  decimals make the nanoseconds, a fourth decimal rounds half up (away from zero); a value
  with an exponent is converted through :class:`decimal.Decimal`, exactly as well.

``null`` (or no ``ts``) becomes :data:`NO_TS`. A value that is not a number raises
:class:`BadTime` with its position.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import msgspec
import numpy as np

__all__ = ["NO_TS", "FAST_MAX_US", "BadTime", "us_to_ns", "NULL_TEXT"]

#: int64 ns of a missing time
NO_TS = int(np.iinfo(np.int64).min)
#: below this many µs (4.5e12 = 2^52 ns), a float64 of the µs is exact to the nanosecond
FAST_MAX_US = 4.0e12
#: the JSON text of a missing value (an Event's default)
NULL_TEXT = msgspec.Raw(b"null")

_FLOATS = msgspec.json.Decoder(list[float | None])
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
_COMMA, _DOT, _MINUS, _ZERO = ord(","), ord("."), ord("-"), ord("0")


class BadTime(ValueError):
    """A time that is not a JSON number; ``index``: its position in the list."""

    def __init__(self, index: int, text: bytes) -> None:
        super().__init__(f"not a number: {text[:40]!r}")
        self.index = index
        self.text = text


def us_to_ns(texts: list[msgspec.Raw]) -> np.ndarray:
    """The JSON numbers ``texts`` (µs) as int64 ns, exact; :data:`NO_TS` for ``null``."""
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64)
    joined = b",".join(texts)
    try:
        values = _FLOATS.decode(b"[" + joined + b"]")
    except msgspec.DecodeError:
        raise _first_bad(texts) from None
    if len(values) != n:  # a value held a comma: not a number
        raise _first_bad(texts)
    arr = np.array(values, dtype=np.float64)
    missing = np.isnan(arr)
    if not (np.abs(arr[~missing]) >= FAST_MAX_US).any():
        whole = np.floor(np.where(missing, 0.0, arr))
        out = whole.astype(np.int64) * 1000 + np.rint((np.where(missing, 0.0, arr) - whole)
                                                       * 1000.0).astype(np.int64)
        out[missing] = NO_TS
        return out
    out = _digits(joined, n)
    out[missing] = NO_TS
    return out


def _first_bad(texts: list[msgspec.Raw]) -> BadTime:
    for i, t in enumerate(texts):
        try:
            v = msgspec.json.decode(t)
        except msgspec.DecodeError:
            return BadTime(i, bytes(t))
        if v is not None and (type(v) not in (int, float)):
            return BadTime(i, bytes(t))
    return BadTime(0, bytes(texts[0]))  # not reached: the decoder named something


def _digits(joined: bytes, n: int) -> np.ndarray:
    """Exact ns of ``n`` comma-joined JSON numbers (and nulls, read as 0) in µs. Numbers of
    one shape (length, place of the dot) are weighed column by column (one numpy pass per
    digit place; a chunk of one shape is a matrix view of the text already); a value with an exponent, a null or over 16 integer digits goes
    through :func:`_exact`."""
    buf = np.frombuffer(joined + b",", dtype=np.uint8)
    ends = np.flatnonzero(buf == _COMMA)
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    neg = buf[starts] == _MINUS
    s0 = starts + neg
    lens = ends - s0
    dots = np.flatnonzero(buf == _DOT)
    dot_off = lens.copy()
    owner = np.searchsorted(ends, dots)
    dot_off[owner] = dots - s0[owner]
    other = (buf < _ZERO) | (buf > _ZERO + 9)
    other[ends] = False
    other[dots] = False
    other[starts[neg]] = False
    special = np.zeros(n, dtype=bool)
    special[np.searchsorted(ends, np.flatnonzero(other))] = True
    special |= (dot_off > 16) | (lens == 0)
    out = np.zeros(n, dtype=np.int64)
    key = np.where(special, -1, lens * 64 + dot_off)
    uniq, inv = np.unique(key, return_inverse=True)
    for k, shape in enumerate(uniq.tolist()):
        rows = np.flatnonzero(inv == k)
        if shape < 0:
            for i in rows.tolist():
                out[i] = _exact(joined[starts[i]:ends[i]])
            continue
        width, d = divmod(shape, 64)
        # a chunk of one shape is a matrix of its text already; else one gather per place
        mat = (buf[:n * (width + 1)].reshape(n, width + 1)
               if len(rows) == n and not neg.any() else None)
        first = s0[rows]
        total = np.zeros(len(rows), np.int64)
        for j in range(min(width, d + 4)):
            place = j - d  # < 0: integer digit, > 0: decimal
            if place == 0:
                continue
            w = _POW10[2 - place] if place < 0 else _POW10[3 - place]
            col = mat[:, j] if mat is not None else buf[first + j]
            total += (col.astype(np.int64) - _ZERO) * w
        if width > d + 4:
            col = mat[:, d + 4] if mat is not None else buf[first + d + 4]
            total += col >= _ZERO + 5  # a fourth decimal rounds half up
        out[rows] = np.where(neg[rows], -total, total)
    return out


def _exact(text: bytes) -> int:
    """One value by Decimal (an exponent); 0 for null (the caller marks it missing); beyond
    int64 ns: the int64 extreme, which the range check then refuses."""
    if text == b"null":
        return 0
    try:
        ns = (Decimal(text.decode()) * 1000).to_integral_value(rounding="ROUND_HALF_UP")
    except (InvalidOperation, UnicodeDecodeError):
        return 0
    lim = int(np.iinfo(np.int64).max)
    return int(max(-lim, min(lim, int(ns))))
