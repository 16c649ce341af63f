"""Read a Chrome-trace JSON document in bounded memory: one pass over a window of the file.

The document is read through a :class:`Window`: a few MB of the file (or of the gzip stream)
at a time, refilled as the reader moves on, so memory does not grow with the file.

:func:`find_events` locates the top-level ``traceEvents`` array: a regular expression finds
candidate keys and each is *validated by a decode*: the document up to the key, closed with
``}``, must decode as an object (``msgspec`` into ``dict[str, Raw]``: nothing is built but one
view per key), which holds only when the key is at the top level, outside any string.
:func:`iter_event_chunks` then hands the events to a typed decoder about ``chunk_bytes`` at a
time, in place: the comma that ends a chunk is overwritten with ``]`` (and the one before it
with ``[``) for the length of one decode and restored at once, so only one chunk of events is
alive as Python objects at a time.

Cuts are found with a regular expression (``}``, comma, ``{`` between events) and validated by
the decode itself: a cut inside a string or a nested object leaves the chunk with an unclosed
string, object or array, which the decoder rejects; a decode that reports *trailing
characters* has met the real end of the array. The end is therefore found by the decoders,
which track nesting and strings, never by taking the last ``]`` of the file: the keys after the
array (``"INFO"`` / ``"ERROR"`` log arrays, ``baseTimeNanoseconds``, ``traceName``) are read
once the events are, and only the keys the importer uses are kept (:data:`KEPT_KEYS`), so
peak memory does not depend on key order. When a few candidate cuts in a row fail (names full
of ``}, {``), a small scanner that tracks nesting and strings finds the next comma between two
events: slow, but bounded in memory, never a whole-document parse.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

__all__ = ["ChunkDecodeError", "EventsError", "KEPT_KEYS", "Layout", "Window", "find_events",
           "iter_event_chunks"]

_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_SEP = re.compile(rb"\}\s*,\s*\{")
_NON_BLANK = re.compile(rb"\S")
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_TRUNCATED = "truncated"
_MAX_KEY_TRIES = 8
_MAX_CUT_TRIES = 4
_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SKIP = msgspec.json.Decoder(msgspec.Raw)

#: the top-level keys the importer reads (the others are skipped, never kept)
KEPT_KEYS = frozenset({"deviceProperties", "distributedInfo", "baseTimeNanoseconds"})


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


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class Window:
    """Bytes ``[base, base + len(buf))`` of a stream, read on demand. Positions given to and
    returned by this module are stream offsets. A refill makes a new ``buf`` (views decoded
    from the old one stay valid) holding the bytes from :meth:`keep_from` on."""

    def __init__(self, stream: Readable | None, data: bytes | bytearray = b"",
                 block: int = 4 << 20, error: Callable[[Exception], str] | None = None,
                 size: int | None = None) -> None:
        self.buf = bytearray(data)
        self.base = 0
        self.eof = stream is None or size == 0
        self._stream = stream
        self._block = block
        self._keep = 0
        self._error = error or (lambda e: f"cannot read ({e})")
        self._size = size  # of the stream, when known (a plain file): no reads past it

    @classmethod
    def of(cls, data: bytes | bytearray) -> Window:
        """A window holding a whole document already in memory."""
        return cls(None, data)

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def keep_from(self, pos: int) -> None:
        """Bytes before ``pos`` are no longer needed."""
        self._keep = max(self._keep, pos)

    def ensure(self, upto: int) -> bool:
        """Read until the window reaches stream offset ``upto`` or the end of the stream;
        whether it reached ``upto``."""
        while self.end < upto and not self.eof:
            self._refill(max(upto - self.end, self._block))
        return self.end >= upto

    def read_all(self) -> None:
        while not self.eof:
            self._refill(max(self._block, len(self.buf)))

    def _refill(self, want: int) -> None:
        assert self._stream is not None
        if self._size is not None:
            want = max(min(want, self._size - self.end), 1)
        drop = min(max(self._keep - self.base, 0), len(self.buf))
        keep = len(self.buf) - drop
        new = bytearray(keep + want)
        new[:keep] = memoryview(self.buf)[drop:]
        try:
            with memoryview(new) as view, view[keep:] as tail:
                got = self._stream.readinto(tail) or 0
        except (OSError, EOFError, zlib.error) as e:  # a read error, a broken gzip stream
            raise EventsError(self._error(e)) from None
        if got < want:
            del new[keep + got:]
            if got == 0:
                self.eof = True
        self.buf = new
        self.base += drop
        if self._size is not None and self.end >= self._size:
            self.eof = True


@dataclass
class Layout:
    """``start``: stream offset of the ``[`` of the events array; ``end``: of its ``]`` (-1
    until the events have been read); ``keys``: the top-level values of :data:`KEPT_KEYS`,
    raw JSON (those after the array are added once it has been read)."""

    start: int
    end: int = -1
    keys: dict[str, bytes] = field(default_factory=dict)
    bare: bool = False


def _invalid(e: Exception) -> EventsError:
    return EventsError(f"invalid or truncated JSON ({e}); re-export the trace or check the copy")


def _json_kind(first: int) -> str:
    return {ord("{"): "an object", ord("["): "an array", ord('"'): "a string",
            ord("t"): "a boolean", ord("f"): "a boolean", ord("n"): "null"}.get(first, "a number")


_MEMBER = re.compile(rb'\s*"((?:[^"\\]|\\.)*)"\s*:\s*', re.S)
#: the longest key the parser waits for before calling the document invalid
_MAX_KEY_BYTES = 1 << 20
#: a value of a skipped key is skipped by the C decoder while it fits this much of the window;
#: a longer one (a huge log array) by a streaming scanner, so memory stays bounded
_MAX_VALUE_BYTES = 4 << 20


def _byte_at(win: Window, pos: int) -> tuple[int, int] | None:
    """The first non-blank byte at or after stream offset ``pos`` and its offset; None at the
    end of the stream."""
    m = _search(win, _NON_BLANK, pos)
    return None if m is None else (m.start() + win.base, win.buf[m.start()])


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
            _SKIP.decode(memoryview(win.buf)[rel:])
        except msgspec.DecodeError as e:
            m = _TRAILING.search(str(e))
            if m is not None:
                i = rel + int(m.group(1)) - 2  # the trailing byte is at N - 1
                while i > rel and win.buf[i] in b" \t\r\n":
                    i -= 1
                return i + 1 + win.base
            if _TRUNCATED not in str(e) or win.eof:
                raise _invalid(e) from None
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
            _SKIP.decode(memoryview(buf)[rb:])
            whole = True
        except msgspec.DecodeError as e:
            end = _array_end(win, begin, e)
            if end is not None:
                return end + 1
            if _TRUNCATED not in str(e):
                raise _invalid(e) from None
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
                _SKIP.decode(memoryview(buf)[rb:c + 1])
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
        m = _STRUCTURAL.search(win.buf, i - win.base)
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
            t = _STRING_TAIL.match(win.buf, m.start() + 1)
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
        got = _byte_at(win, pos)
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
        vb = _byte_at(win, value)
        if until_events and key == "traceEvents" and vb is not None:
            if vb[1] == 0x5B:  # [
                return vb[0]
            raise EventsError(f"no traceEvents list (it is {_json_kind(vb[1])}); this is not a "
                              "Kineto / Chrome trace (export one with prof.export_chrome_trace)")
        end = _value_end(win, value)
        if key in KEPT_KEYS:
            keys[key] = bytes(win.buf[value - win.base:end - win.base])
        pos = end


def _closed(win: Window, at: int) -> None:
    """After the top-level closing bracket at ``at`` only blanks may follow."""
    win.keep_from(at + 1)
    while True:
        m = _NON_BLANK.search(win.buf, at + 1 - win.base)
        if m is not None:
            raise EventsError(f"invalid JSON (text after the document, at byte "
                              f"{m.start() + win.base}); re-export the trace or check the copy")
        if win.eof:
            return
        at = win.end - 1
        win.keep_from(at + 1)
        win.ensure(win.end + 1)


def _search(win: Window, pattern: re.Pattern[bytes], pos: int) -> re.Match[bytes] | None:
    """First match at or after stream offset ``pos``, reading on as needed (match offsets are
    relative to the window's buffer at return)."""
    while True:
        m = pattern.search(win.buf, max(pos - win.base, 0))
        if m is not None or win.eof:
            return m
        win.ensure(win.end + 1)


def find_events(win: Window) -> Layout:
    """Locate the events of a trace document: ``{"traceEvents": [...], ...}`` or a bare array
    of events, reading the members before it (the kept ones into :attr:`Layout.keys`).
    Raises :class:`EventsError` for an empty file, a document that is not a trace, invalid
    JSON before the events, or an empty event list."""
    got = _byte_at(win, 0)
    if got is None:
        raise EventsError("empty file; re-export the trace from torch.profiler")
    first, c = got
    if c == ord("["):
        lay = Layout(start=first, bare=True)
    elif c != ord("{"):
        raise EventsError(f"top level is {_json_kind(c)}, not a trace object")
    else:
        keys: dict[str, bytes] = {}
        start = _members(win, first + 1, keys, until_events=True, first=True)
        if start is None:
            raise EventsError("no traceEvents list; this is not a Kineto / Chrome trace "
                              "(export one with prof.export_chrome_trace)")
        lay = Layout(start=start, keys=keys)
    nxt = _byte_at(win, lay.start + 1)
    if nxt is not None and nxt[1] == ord("]"):
        raise EventsError("traceEvents is empty; nothing to import")
    return lay


# -- chunks ----------------------------------------------------------------------------------

_STRUCTURAL = re.compile(rb'[\[\]{}",]')
_STRING_TAIL = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _scan(buf: bytearray, pos: int, min_pos: int) -> tuple[str, int]:
    """From ``pos`` (between events, outside any string), the first comma between two events
    at or after ``min_pos`` (``("comma", offset)``) or the array's closing bracket
    (``("end", offset)``); ``("truncated", -1)`` when the data ends first. Offsets in ``buf``.
    Tracks nesting and strings in Python: the slow path, for pathological names."""
    depth = 1
    while True:
        m = _STRUCTURAL.search(buf, pos)
        if m is None:
            return _TRUNCATED, -1
        i = m.start()
        c = buf[i]
        pos = i + 1
        if c == 0x22:  # "
            t = _STRING_TAIL.match(buf, pos)
            if t is None:
                return _TRUNCATED, -1
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
    """The array ends before the tried cut, at ``end`` (stream offset of its ``]``)."""

    def __init__(self, end: int) -> None:
        self.end = end


def _array_end(win: Window, begin: int, err: msgspec.DecodeError) -> int | None:
    """When ``err`` says trailing characters follow a value decoded from ``begin``, the stream
    offset of the ``]`` that closed it."""
    m = _TRAILING.search(str(err))
    if m is None:
        return None
    rel = begin - win.base
    end = win.buf.rfind(b"]", rel, rel + int(m.group(1)))
    return end + win.base if end > rel else None


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
        end = _array_end(win, begin, e)
        if end is not None:
            raise _End(end) from None
        if not known_good:
            try:
                _SKIP.decode(chunk)
            except msgspec.DecodeError as skip:
                end = _array_end(win, begin, skip)
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
            _SKIP.decode(memoryview(buf)[rb:])
        except msgspec.DecodeError as e:
            end = _array_end(win, begin, e)
            if end is not None:
                return end
            if _TRUNCATED in str(e) and not win.eof:
                win.ensure(win.end + 1)
                continue
            raise _invalid(e) from None
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
    lay.keys.update(_keys_after(win, lay))


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
        kind, at = _scan(win.buf, begin - win.base + 1, begin - win.base + chunk_bytes)
        if kind != _TRUNCATED:
            return kind, at + win.base
        if win.eof:
            raise EventsError("invalid or truncated JSON (the events array is not closed); "
                              "re-export the trace or check the copy")
        win.ensure(win.end + chunk_bytes)


def _keys_after(win: Window, lay: Layout) -> dict[str, bytes]:
    """The kept top-level keys after the events array, reading the rest of the document (the
    other values skipped a window at a time) and checking that it is valid JSON."""
    keys: dict[str, bytes] = {}
    if lay.bare:
        _closed(win, lay.end)
        return keys
    _members(win, lay.end + 1, keys, until_events=False, first=False)
    return keys
