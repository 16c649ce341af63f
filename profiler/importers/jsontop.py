"""The top level of a trace document, read in place through a :class:`~.jsonwin.Window`:
where ``traceEvents`` starts (:func:`find_events`) and the members around it (:func:`keys_after`).

Members are parsed one at a time: the values of :data:`KEPT_KEYS` are kept (as raw JSON), every
other value is skipped without building anything: by the C decoder when it fits in the
window, an array that goes on beyond it in cuts validated by a skip-only decode (C speed), and
anything else by a streaming scanner that tracks nesting and strings. So Kineto's ``"INFO"`` /
``"ERROR"`` log arrays, before or after the events, cost a window of memory, not their size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from .jsonwin import (
    NON_BLANK,
    SKIP,
    STRING_TAIL,
    STRUCTURAL,
    TRAILING,
    TRUNCATED,
    EventsError,
    Window,
    array_end,
    byte_at,
    invalid,
    json_kind,
)

__all__ = ["KEPT_KEYS", "Layout", "find_events", "keys_after"]

#: the top-level keys the importer reads (the others are skipped, never kept)
KEPT_KEYS = frozenset({"deviceProperties", "distributedInfo", "baseTimeNanoseconds"})
_MAX_CUT_TRIES = 4


@dataclass
class Layout:
    """``start``: stream offset of the ``[`` of the events array; ``end``: of its ``]`` (-1
    until the events have been read); ``keys``: the top-level values of :data:`KEPT_KEYS`,
    raw JSON (those after the array are added once it has been read)."""

    start: int
    end: int = -1
    keys: dict[str, bytes] = field(default_factory=dict)
    bare: bool = False


_MEMBER = re.compile(rb'\s*"((?:[^"\\]|\\.)*)"\s*:\s*', re.S)
#: the longest key the parser waits for before calling the document invalid
_MAX_KEY_BYTES = 1 << 20
#: a value of a skipped key is skipped by the C decoder while it fits this much of the window;
#: a longer one (a huge log array) by a streaming scanner, so memory stays bounded
_MAX_VALUE_BYTES = 4 << 20


def _member_key(win: Window, pos: int) -> tuple[str, int]:
    """The key of the object member at ``pos`` (blanks allowed before it) and the offset of
    its value."""
    while True:
        m = _MEMBER.match(win.buf, pos - win.base)
        if m is not None and m.end() < len(win.buf):
            raw = m.group(1)
            try:
                key = raw.decode() if b"\\" not in raw else msgspec.json.decode(b'"' + raw + b'"')
            except (UnicodeDecodeError, msgspec.DecodeError):
                raise EventsError(f"invalid JSON (a key at byte {pos} is not a string); "
                                  "re-export the trace or check the copy") from None
            return str(key), m.end() + win.base
        if win.eof or win.end - pos > _MAX_KEY_BYTES:
            raise EventsError(f"invalid or truncated JSON (expected a key at byte {pos}); "
                              "re-export the trace or check the copy")
        win.ensure(win.end + 1)


def _value_end(win: Window, pos: int) -> int:
    """Stream offset just after the JSON value starting at ``pos``, reading on as needed:
    the C decoder skips it when it is in the window; an array that goes on beyond it is
    skipped in cuts (:func:`_stream_past`); anything else may grow the window up to
    :data:`_MAX_VALUE_BYTES`, then is scanned a window at a time."""
    is_array = win.buf[pos - win.base] == 0x5B
    while True:
        rel = pos - win.base
        try:
            SKIP.decode(memoryview(win.buf)[rel:])
        except msgspec.DecodeError as e:
            m = TRAILING.search(str(e))
            if m is not None:
                i = rel + int(m.group(1)) - 2  # the trailing byte is at N - 1
                while i > rel and win.buf[i] in b" \t\r\n":
                    i -= 1
                return i + 1 + win.base
            if TRUNCATED not in str(e) or win.eof:
                raise invalid(e) from None
            if is_array:
                return _stream_past(win, pos)
            if win.end - pos > _MAX_VALUE_BYTES:
                return _scanned_past(win, pos)
            win.ensure(win.end + 1)
            continue
        if win.eof:
            return win.end
        win.ensure(win.end + 1)


_ELEMENT_END = re.compile(rb'[}\]"0-9el]\s*(,)')


def _stream_past(win: Window, pos: int) -> int:
    """Offset just after the long array starting at ``pos``, holding one window of it at a
    time: skipped in cuts validated by a skip-only decode (C speed, as the events are read);
    when the cuts keep failing, by tracking nesting and strings in Python."""
    begin = pos
    while True:
        win.keep_from(begin)
        win.ensure(begin + 2 * _CUT_BYTES)
        buf, rb = win.buf, begin - win.base
        saved = buf[rb]
        buf[rb] = 0x5B
        try:
            SKIP.decode(memoryview(buf)[rb:])
            whole = True
        except msgspec.DecodeError as e:
            end = array_end(win, begin, e)
            if end is not None:
                return end + 1
            if TRUNCATED not in str(e):
                raise invalid(e) from None
            whole = False
        finally:
            buf[rb] = saved
        if whole and win.eof:
            return win.end
        cut = None
        for m, _ in zip(_ELEMENT_END.finditer(win.buf, rb + _CUT_BYTES), range(_MAX_CUT_TRIES),
                        strict=False):
            c = m.start(1)
            saved_b, saved_c = buf[rb], buf[c]
            buf[rb], buf[c] = 0x5B, 0x5D  # [ ]
            try:
                SKIP.decode(memoryview(buf)[rb:c + 1])
                cut = c + win.base
                break
            except msgspec.DecodeError:
                continue
            finally:
                buf[rb], buf[c] = saved_b, saved_c
        if cut is None:
            return _scanned_past(win, begin)
        begin = cut


_CUT_BYTES = 2 << 20


def _scanned_past(win: Window, pos: int) -> int:
    """End of the array / object starting at ``pos``, found by tracking nesting and strings
    a window at a time (Python speed, memory of one window)."""
    depth = 0
    i = pos
    while True:
        win.keep_from(i)
        m = STRUCTURAL.search(win.buf, i - win.base)
        if m is None:
            if win.eof:
                raise EventsError("invalid or truncated JSON (a value is not closed); "
                                  "re-export the trace or check the copy")
            i = win.end
            win.ensure(win.end + 1)
            continue
        j = m.start() + win.base
        c = win.buf[m.start()]
        if c == 0x22:  # "
            t = STRING_TAIL.match(win.buf, m.start() + 1)
            if t is None:
                if win.eof:
                    raise EventsError("invalid or truncated JSON (a string is not closed); "
                                      "re-export the trace or check the copy")
                i = j
                win.keep_from(j)
                win.ensure(win.end + 1)
                continue
            i = t.end() + win.base
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            i = j + 1
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
            i = j + 1
            if depth == 0:
                return i
        else:
            i = j + 1


def _members(win: Window, pos: int, keys: dict[str, bytes], *, until_events: bool,
             first: bool) -> int | None:
    """Read the members of an object from ``pos`` (``first``: just after its ``{``; else
    just after a member's value): values of :data:`KEPT_KEYS` into ``keys``, the others
    skipped. With ``until_events``, stop at ``"traceEvents": [`` and return the offset of its
    ``[``; otherwise read to the closing ``}`` and return None."""
    while True:
        win.keep_from(pos)
        got = byte_at(win, pos)
        if got is None:
            raise EventsError("invalid or truncated JSON (the top-level object is not closed);"
                              " re-export the trace or check the copy")
        at, c = got
        if c == 0x7D and first:  # }
            _closed(win, at)
            return None
        if not first:
            if c == 0x7D:
                _closed(win, at)
                return None
            if c != 0x2C:  # ,
                raise EventsError(f"invalid JSON (expected ',' or '}}' at byte {at}); "
                                  "re-export the trace or check the copy")
            at += 1
        first = False
        key, value = _member_key(win, at)
        vb = byte_at(win, value)
        if until_events and key == "traceEvents" and vb is not None:
            if vb[1] == 0x5B:  # [
                return vb[0]
            raise EventsError(f"no traceEvents list (it is {json_kind(vb[1])}); this is not a "
                              "Kineto / Chrome trace (export one with prof.export_chrome_trace)")
        end = _value_end(win, value)
        if key in KEPT_KEYS:
            keys[key] = bytes(win.buf[value - win.base:end - win.base])
        pos = end


def _closed(win: Window, at: int) -> None:
    """After the top-level closing bracket at ``at`` only blanks may follow."""
    win.keep_from(at + 1)
    while True:
        m = NON_BLANK.search(win.buf, at + 1 - win.base)
        if m is not None:
            raise EventsError(f"invalid JSON (text after the document, at byte "
                              f"{m.start() + win.base}); re-export the trace or check the copy")
        if win.eof:
            return
        at = win.end - 1
        win.keep_from(at + 1)
        win.ensure(win.end + 1)


def find_events(win: Window) -> Layout:
    """Locate the events of a trace document: ``{"traceEvents": [...], ...}`` or a bare array
    of events, reading the members before it (the kept ones into :attr:`Layout.keys`).
    Raises :class:`EventsError` for an empty file, a document that is not a trace, invalid
    JSON before the events, or an empty event list."""
    got = byte_at(win, 0)
    if got is None:
        raise EventsError("empty file; re-export the trace from torch.profiler")
    first, c = got
    if c == ord("["):
        lay = Layout(start=first, bare=True)
    elif c != ord("{"):
        raise EventsError(f"top level is {json_kind(c)}, not a trace object")
    else:
        keys: dict[str, bytes] = {}
        start = _members(win, first + 1, keys, until_events=True, first=True)
        if start is None:
            raise EventsError("no traceEvents list; this is not a Kineto / Chrome trace "
                              "(export one with prof.export_chrome_trace)")
        lay = Layout(start=start, keys=keys)
    nxt = byte_at(win, lay.start + 1)
    if nxt is not None and nxt[1] == ord("]"):
        raise EventsError("traceEvents is empty; nothing to import")
    return lay


def keys_after(win: Window, lay: Layout) -> dict[str, bytes]:
    """The kept top-level keys after the events array, reading the rest of the document (the
    other values skipped a window at a time) and checking that it is valid JSON."""
    keys: dict[str, bytes] = {}
    if lay.bare:
        _closed(win, lay.end)
        return keys
    _members(win, lay.end + 1, keys, until_events=False, first=False)
    return keys
