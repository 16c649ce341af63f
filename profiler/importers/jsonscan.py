"""Read a Chrome-trace JSON document in bounded memory, in one pass over its events.

:func:`find_events` locates the top-level ``traceEvents`` array: a regular expression finds
candidate keys and each is *validated by a decode*: the document up to the key, closed with
``}``, must decode as an object (``msgspec`` into ``dict[str, Raw]``: nothing is built but one
zero-copy view per key), which holds only when the key is at the top level, outside any
string. :func:`iter_event_chunks` then hands the events to a typed decoder about
``chunk_bytes`` at a time, in place: the comma that ends a chunk is overwritten with ``]`` (and
the one before it with ``[``) for the length of one decode and restored at once, so no bytes
are copied and only one chunk of events is alive as Python objects at a time.

Cuts are found with a regular expression (``}``, comma, ``{`` between events) and validated by
the decode itself: a cut inside a string or a nested object leaves the chunk with an unclosed
string, object or array, which the decoder rejects; a decode that reports *trailing
characters* has met the real end of the array. The end is therefore found by the decoders,
which track nesting and strings, never by taking the last ``]`` of the file: the keys after the
array (``"INFO"`` / ``"ERROR"`` log arrays, ``baseTimeNanoseconds``, ``traceName``) are decoded
into zero-copy views once the events are read (:attr:`Layout.keys`), so peak memory does not
depend on key order. When a few candidate cuts in a row fail (names full of ``}, {``), a small
scanner that tracks nesting and strings finds the next comma between two events: slow, but
bounded in memory, never a whole-document parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

__all__ = ["ChunkDecodeError", "EventsError", "Layout", "find_events", "iter_event_chunks"]

_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_SEP = re.compile(rb"\}\s*,\s*\{")
_NON_BLANK = re.compile(rb"\S")
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_MAX_KEY_TRIES = 8
_MAX_CUT_TRIES = 4
_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SKIP = msgspec.json.Decoder(msgspec.Raw)


class EventsError(Exception):
    """The document is not a readable trace; ``reason`` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChunkDecodeError(Exception):
    """``decode`` failed on a chunk whose boundaries are right: ``first_index`` is the index
    of the chunk's first event, ``error`` what ``decode`` raised, ``chunk`` its bytes."""

    def __init__(self, first_index: int, error: Exception, chunk: bytes) -> None:
        super().__init__(str(error))
        self.first_index = first_index
        self.error = error
        self.chunk = chunk


@dataclass
class Layout:
    """``start``: offset of the ``[`` of the events array; ``end``: of its ``]`` (-1 until the
    events have been read); ``keys``: the other top-level values, undecoded (zero-copy views
    of the buffer; the ones after the array are added once it has been read)."""

    start: int
    end: int = -1
    keys: dict[str, msgspec.Raw] = field(default_factory=dict)
    bare: bool = False


def _invalid(e: Exception) -> EventsError:
    return EventsError(f"invalid or truncated JSON ({e}); re-export the trace or check the copy")


def _json_kind(first: int) -> str:
    return {ord("{"): "an object", ord("["): "an array", ord('"'): "a string",
            ord("t"): "a boolean", ord("f"): "a boolean", ord("n"): "null"}.get(first, "a number")


def _decode_keys(buf: bytearray, first: int, close: int) -> dict[str, msgspec.Raw] | None:
    """The object from ``first`` (its ``{``) to ``close``, where a ``}`` is written for the
    decode (and a comma just before it blanked); None when that is not a valid object."""
    prev = buf.rfind(b",", first, close)
    blank = prev if prev >= 0 and _NON_BLANK.search(buf, prev + 1, close) is None else -1
    saved = buf[close]
    buf[close] = 0x7D  # }
    if blank >= 0:
        buf[blank] = 0x20
    try:  # no release(): the returned views keep the buffer exported
        return _KEYS.decode(memoryview(buf)[first:close + 1])
    except msgspec.DecodeError:
        return None
    finally:
        buf[close] = saved
        if blank >= 0:
            buf[blank] = 0x2C  # ,


def find_events(buf: bytearray) -> Layout:
    """Locate the events of a trace document: ``{"traceEvents": [...], ...}`` or a bare array
    of events. Raises :class:`EventsError` for an empty file, a document that is not a trace,
    invalid JSON before the events, or an empty event list."""
    head = _NON_BLANK.search(buf)
    if head is None:
        raise EventsError("empty file; re-export the trace from torch.profiler")
    first = head.start()
    if buf[first] == ord("["):
        lay = Layout(start=first, bare=True)
    elif buf[first] != ord("{"):
        raise EventsError(f"top level is {_json_kind(buf[first])}, not a trace object")
    else:
        lay = _top_level_key(buf, first)
    nxt = _NON_BLANK.search(buf, lay.start + 1)
    if nxt is not None and buf[nxt.start()] == ord("]"):
        raise EventsError("traceEvents is empty; nothing to import")
    return lay


def _top_level_key(buf: bytearray, first: int) -> Layout:
    """The ``traceEvents`` key of the object starting at ``first`` (see the module
    docstring)."""
    pos = first
    for _ in range(_MAX_KEY_TRIES):
        m = _KEY.search(buf, pos)
        if m is None:
            break
        keys = _decode_keys(buf, first, m.start())
        if keys is not None:
            return Layout(start=m.end() - 1, keys=keys)
        pos = m.end()
    try:  # no key found fast: one skip-only decode of the whole document decides
        doc = _KEYS.decode(buf)
    except msgspec.DecodeError as e:
        raise _invalid(e) from None
    found = doc.pop("traceEvents", None)
    if found is not None and _first_byte(found) == ord("["):
        return Layout(start=_offset(buf, found), keys=doc)
    what = "" if found is None else f" (it is {_json_kind(_first_byte(found))})"
    raise EventsError(f"no traceEvents list{what}; this is not a Kineto / Chrome trace "
                      "(export one with prof.export_chrome_trace)")


def _offset(buf: bytearray, raw: msgspec.Raw) -> int:
    """Offset in ``buf`` of a zero-copy ``Raw`` value decoded from it."""
    with memoryview(buf) as outer, memoryview(raw) as inner:
        base = np.frombuffer(outer, dtype=np.uint8).ctypes.data
        off = int(np.frombuffer(inner, dtype=np.uint8).ctypes.data) - int(base)
    if not 0 <= off <= len(buf) - len(raw):  # pragma: no cover - msgspec copied the value
        raise AssertionError("msgspec.Raw is not a view of the decoded buffer")
    return off


def _first_byte(raw: msgspec.Raw) -> int:
    with memoryview(raw) as v:
        return v[0] if len(v) else 0


# -- chunks ----------------------------------------------------------------------------------

_STRUCTURAL = re.compile(rb'[\[\]{}",]')
_STRING_TAIL = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _scan(buf: bytearray, pos: int, min_pos: int) -> tuple[str, int]:
    """From ``pos`` (between events, outside any string), the first comma between two events
    at or after ``min_pos`` (``("comma", offset)``) or the array's closing bracket
    (``("end", offset)``); ``("truncated", -1)`` when the data ends first. Tracks nesting and
    strings in Python: the slow path, for pathological names."""
    depth = 1
    while True:
        m = _STRUCTURAL.search(buf, pos)
        if m is None:
            return "truncated", -1
        i = m.start()
        c = buf[i]
        pos = i + 1
        if c == 0x22:  # "
            t = _STRING_TAIL.match(buf, pos)
            if t is None:
                return "truncated", -1
            pos = t.end()
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
            if depth == 0:
                return "end", i
        elif depth == 1 and i >= min_pos:
            return "comma", i


class _End(Exception):
    """The array ends before the tried cut, at ``end`` (its ``]``)."""

    def __init__(self, end: int) -> None:
        self.end = end


def _array_end(buf: bytearray, begin: int, err: msgspec.DecodeError) -> int | None:
    """When ``err`` says trailing characters follow a value decoded from ``begin``, the offset
    of the ``]`` that closed it."""
    m = _TRAILING.search(str(err))
    if m is None:
        return None
    end = buf.rfind(b"]", begin, begin + int(m.group(1)))
    return end if end > begin else None


def _decode_at(buf: bytearray, begin: int, cut: int, decode: Callable[[Any], list[Any]],
               first_index: int, *, known_good: bool) -> list[Any] | None:
    """Decode the events between ``begin`` (``[`` or a comma) and ``cut`` (a comma or the
    array's ``]``). Returns None for a cut inside a string or nested value; raises
    :class:`_End` when the array ends before ``cut`` and :class:`ChunkDecodeError` for an
    error that is the data's."""
    saved_b, saved_c = buf[begin], buf[cut]
    buf[begin], buf[cut] = 0x5B, 0x5D  # [ ]
    # no release() of the view: the decoded events' raw fields keep it exported
    chunk = memoryview(buf)[begin:cut + 1]
    try:
        return decode(chunk)
    except msgspec.ValidationError as e:
        raise ChunkDecodeError(first_index, e, bytes(chunk)) from None
    except msgspec.DecodeError as e:
        end = _array_end(buf, begin, e)
        if end is not None:
            raise _End(end) from None
        if not known_good:
            try:
                _SKIP.decode(chunk)
            except msgspec.DecodeError as skip:
                end = _array_end(buf, begin, skip)
                if end is not None:
                    raise _End(end) from None
                return None  # the cut is inside a string or a nested value
        raise ChunkDecodeError(first_index, e, bytes(chunk)) from None
    finally:
        buf[begin], buf[cut] = saved_b, saved_c


def _skip_to_end(buf: bytearray, begin: int) -> int:
    """Offset of the ``]`` that closes the array, from ``begin`` (``[`` or a comma between
    events): one skip-only decode, no objects built."""
    saved = buf[begin]
    buf[begin] = 0x5B
    try:
        _SKIP.decode(memoryview(buf)[begin:])
    except msgspec.DecodeError as e:
        end = _array_end(buf, begin, e)
        if end is None:
            raise _invalid(e) from None
        return end
    finally:
        buf[begin] = saved
    # the array runs to the end of the document: its last non-blank byte
    i = len(buf) - 1
    while i > begin and buf[i] in b" \t\r\n":
        i -= 1
    return i


def iter_event_chunks(buf: bytearray, lay: Layout, decode: Callable[[Any], list[Any]], *,
                      chunk_bytes: int = 2 << 20,
                      on_bytes: Callable[[int], None] | None = None) -> Iterator[list[Any]]:
    """Yield the events of ``buf`` as lists: ``decode`` (a typed ``msgspec`` decoder) applied
    to about ``chunk_bytes`` of the array at a time. At the end ``lay.end`` is set and the
    keys after the array are added to ``lay.keys``. An error of ``decode`` that is the data's
    (a type error, invalid UTF-8, ...) is raised as :class:`ChunkDecodeError` with the index of
    the chunk's first event; a document that is not valid JSON as :class:`EventsError`.
    ``on_bytes(n)`` reports progress. Mutates two bytes of ``buf`` per decode and restores
    them at once."""
    begin = lay.start
    first_index = 0
    while True:
        chunk, cut, last = _next_chunk(buf, begin, decode, first_index, chunk_bytes)
        if on_bytes is not None:
            on_bytes(cut - begin)
        first_index += len(chunk)
        yield chunk
        if last:
            break
        begin = cut
    lay.end = cut
    lay.keys.update(_keys_after(buf, lay))


def _next_chunk(buf: bytearray, begin: int, decode: Callable[[Any], list[Any]],
                first_index: int, chunk_bytes: int) -> tuple[list[Any], int, bool]:
    """The next chunk from ``begin``: its events, where it ends, and whether that is the end
    of the array."""
    pos = begin + chunk_bytes
    end: int | None = None
    try:
        for _ in range(_MAX_CUT_TRIES):
            m = _SEP.search(buf, pos)
            if m is None:
                end = _skip_to_end(buf, begin)
                break
            comma = buf.index(b",", m.start(), m.end())
            chunk = _decode_at(buf, begin, comma, decode, first_index, known_good=False)
            if chunk is not None:
                return chunk, comma, False
            pos = m.end() - 1
        else:
            kind, at = _scan(buf, begin + 1, begin + chunk_bytes)
            if kind == "truncated":
                raise EventsError("invalid or truncated JSON (the events array is not closed); "
                                  "re-export the trace or check the copy")
            if kind == "comma":
                got = _decode_at(buf, begin, at, decode, first_index, known_good=True)
                assert got is not None
                return got, at, False
            end = at
    except _End as e:
        end = e.end
    assert end is not None
    got = _decode_at(buf, begin, end, decode, first_index, known_good=True)
    assert got is not None
    return got, end, True


def _keys_after(buf: bytearray, lay: Layout) -> dict[str, msgspec.Raw]:
    """The top-level keys after the events array (decoded as views), checking that the rest
    of the document is valid."""
    nxt = _NON_BLANK.search(buf, lay.end + 1)
    if lay.bare:
        if nxt is not None:
            raise EventsError(f"invalid JSON (text after the events array, at byte "
                              f"{nxt.start()}); re-export the trace or check the copy")
        return {}
    if nxt is None:
        raise EventsError("invalid or truncated JSON (the document ends after traceEvents); "
                          "re-export the trace or check the copy")
    sep = nxt.start()
    if buf[sep] not in (0x2C, 0x7D):  # , }
        raise EventsError(f"invalid JSON (unexpected text after traceEvents, at byte {sep}); "
                          "re-export the trace or check the copy")
    saved_e, saved_s = buf[lay.end], buf[sep]
    buf[lay.end] = 0x7B  # {
    if saved_s == 0x2C:
        buf[sep] = 0x20
    try:
        return _KEYS.decode(memoryview(buf)[lay.end:])
    except msgspec.DecodeError as e:
        raise _invalid(e) from None
    finally:
        buf[lay.end], buf[sep] = saved_e, saved_s
