"""Read the events of a Chrome-trace JSON document in bounded memory, one pass through a
:class:`~.jsonwin.Window` of the file (a few MB of it, or of the gzip stream, at a time).

:func:`~.jsontop.find_events` locates the top-level ``traceEvents`` array (parsing the members
before it in place); :func:`iter_event_chunks` then hands the events to a typed decoder about
``chunk_bytes`` at a time, in place: the comma that ends a chunk is overwritten with ``]`` (and
the one before it with ``[``) for the length of one decode and restored at once, so only one
chunk of events is alive as Python objects at a time.

Cuts are found with a regular expression (``}``, comma, ``{`` between events) and validated by
the decode itself: a cut inside a string or a nested object leaves the chunk with an unclosed
string, object or array, which the decoder rejects; a decode that reports *trailing
characters* has met the real end of the array. The end is therefore found by the decoders,
which track nesting and strings, never by taking the last ``]`` of the file; the members after
the array (``"INFO"`` / ``"ERROR"`` log arrays, ``baseTimeNanoseconds``, ``traceName``) are
read by :func:`~.jsontop.keys_after`, keeping only :data:`~.jsontop.KEPT_KEYS`. When a few
candidate cuts in a row fail (names full of ``}, {``), a small scanner that tracks nesting and
strings finds the next comma between two events: slow, but bounded in memory, never a
whole-document parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .jsontop import KEPT_KEYS, Layout, find_events, keys_after
from .jsonwin import SKIP, TRUNCATED, EventsError, Window, array_end, invalid, scan

__all__ = ["ChunkDecodeError", "EventsError", "KEPT_KEYS", "Layout", "Window", "find_events",
           "iter_event_chunks"]

_SEP = re.compile(rb"\}\s*,\s*\{")
_MAX_CUT_TRIES = 4


class ChunkDecodeError(Exception):
    """``decode`` failed on a chunk whose boundaries are right: ``first_index`` is the index
    of the chunk's first event, ``error`` what ``decode`` raised, ``chunk`` its bytes."""

    def __init__(self, first_index: int, error: Exception, chunk: bytes) -> None:
        super().__init__(str(error))
        self.first_index = first_index
        self.error = error
        self.chunk = chunk


class _End(Exception):
    """The array ends before the tried cut, at ``end`` (stream offset of its ``]``)."""

    def __init__(self, end: int) -> None:
        self.end = end


def _decode_at(win: Window, begin: int, cut: int, decode: Callable[[Any], list[Any]],
               first_index: int, *, known_good: bool) -> list[Any] | None:
    """Decode the events between ``begin`` (``[`` or a comma) and ``cut`` (a comma or the
    array's ``]``). Returns None for a cut inside a string or nested value; raises
    :class:`_End` when the array ends before ``cut`` and :class:`ChunkDecodeError` for an
    error that is the data's."""
    buf, rb, rc = win.buf, begin - win.base, cut - win.base
    saved_b, saved_c = buf[rb], buf[rc]
    buf[rb], buf[rc] = 0x5B, 0x5D  # [ ]
    # no release() of the view: the decoded events' raw fields keep it exported
    chunk = memoryview(buf)[rb:rc + 1]
    try:
        return decode(chunk)
    except msgspec.ValidationError as e:
        raise ChunkDecodeError(first_index, e, bytes(chunk)) from None
    except msgspec.DecodeError as e:
        end = array_end(win, begin, e)
        if end is not None:
            raise _End(end) from None
        if not known_good:
            try:
                SKIP.decode(chunk)
            except msgspec.DecodeError as skip:
                end = array_end(win, begin, skip)
                if end is not None:
                    raise _End(end) from None
                return None  # the cut is inside a string or a nested value
        raise ChunkDecodeError(first_index, e, bytes(chunk)) from None
    finally:
        buf[rb], buf[rc] = saved_b, saved_c


def _skip_to_end(win: Window, begin: int) -> int:
    """Stream offset of the ``]`` that closes the array, from ``begin`` (``[`` or a comma
    between events): skip-only decodes, no objects built; reads on while the data is cut."""
    while True:
        buf, rb = win.buf, begin - win.base
        saved = buf[rb]
        buf[rb] = 0x5B
        try:
            SKIP.decode(memoryview(buf)[rb:])
        except msgspec.DecodeError as e:
            end = array_end(win, begin, e)
            if end is not None:
                return end
            if TRUNCATED in str(e) and not win.eof:
                win.ensure(win.end + 1)
                continue
            raise invalid(e) from None
        finally:
            buf[rb] = saved
        if not win.eof:  # a complete value so far: what follows decides
            win.ensure(win.end + 1)
            continue
        i = len(win.buf) - 1  # the array runs to the end of the document
        while i > rb and win.buf[i] in b" \t\r\n":
            i -= 1
        return i + win.base


def iter_event_chunks(win: Window, lay: Layout, decode: Callable[[Any], list[Any]], *,
                      chunk_bytes: int = 2 << 20,
                      on_bytes: Callable[[int], None] | None = None) -> Iterator[list[Any]]:
    """Yield the events as lists: ``decode`` (a typed ``msgspec`` decoder) applied to about
    ``chunk_bytes`` of the array at a time. At the end ``lay.end`` is set and the kept keys
    after the array are added to ``lay.keys``. An error of ``decode`` that is the data's (a
    type error, invalid UTF-8, ...) is raised as :class:`ChunkDecodeError` with the index of
    the chunk's first event; a document that is not valid JSON as :class:`EventsError`.
    ``on_bytes(n)`` reports progress (stream bytes). Mutates two bytes of the window per
    decode and restores them at once."""
    begin = lay.start
    first_index = 0
    while True:
        win.keep_from(begin)
        win.ensure(begin + 2 * chunk_bytes)
        chunk, cut, last = _next_chunk(win, begin, decode, first_index, chunk_bytes)
        if on_bytes is not None:
            on_bytes(cut - begin)
        first_index += len(chunk)
        yield chunk
        del chunk  # its raw fields keep a window buffer alive: not across the next refill
        if last:
            break
        begin = cut
    lay.end = cut
    lay.keys.update(keys_after(win, lay))


def _next_chunk(win: Window, begin: int, decode: Callable[[Any], list[Any]],
                first_index: int, chunk_bytes: int) -> tuple[list[Any], int, bool]:
    """The next chunk from ``begin``: its events, where it ends (stream offset), and whether
    that is the end of the array."""
    pos = begin + chunk_bytes  # stream offset where the search for a cut starts
    end: int | None = None
    try:
        tries = 0
        while tries < _MAX_CUT_TRIES:
            m = _SEP.search(win.buf, max(pos - win.base, 0))
            if m is None:
                if not win.eof:  # an event longer than the window: read on
                    win.ensure(win.end + chunk_bytes)
                    continue
                end = _skip_to_end(win, begin)
                break
            comma = win.buf.index(b",", m.start(), m.end()) + win.base
            chunk = _decode_at(win, begin, comma, decode, first_index, known_good=False)
            if chunk is not None:
                return chunk, comma, False
            pos = m.end() - 1 + win.base
            tries += 1
        else:
            kind, at = _scan_on(win, begin, chunk_bytes)
            if kind == "comma":
                got = _decode_at(win, begin, at, decode, first_index, known_good=True)
                assert got is not None
                return got, at, False
            end = at
    except _End as e:
        end = e.end
    assert end is not None
    got = _decode_at(win, begin, end, decode, first_index, known_good=True)
    assert got is not None
    return got, end, True


def _scan_on(win: Window, begin: int, chunk_bytes: int) -> tuple[str, int]:
    """:func:`_scan` from ``begin``, reading on while the window is too short."""
    while True:
        kind, at = scan(win.buf, begin - win.base + 1, begin - win.base + chunk_bytes)
        if kind != TRUNCATED:
            return kind, at + win.base
        if win.eof:
            raise EventsError("invalid or truncated JSON (the events array is not closed); "
                              "re-export the trace or check the copy")
        win.ensure(win.end + chunk_bytes)


