"""Reading a JSON document through a window of it: :class:`Window` (a few MB of a file or a
gzip stream at a time, refilled as the reader moves on) and the byte-level helpers the
top-level parser (:mod:`.jsontop`) and the event chunker (:mod:`.jsonscan`) share.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

__all__ = ["EventsError", "Readable", "Window", "NON_BLANK", "SKIP", "STRUCTURAL",
           "STRING_TAIL", "TRAILING", "TRUNCATED", "array_end", "byte_at", "invalid",
           "json_kind", "scan", "search"]

NON_BLANK = re.compile(rb"\S")
#: msgspec's message when a value is followed by more text: the byte is 1-based
TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
TRUNCATED = "truncated"
SKIP = msgspec.json.Decoder(msgspec.Raw)
STRUCTURAL = re.compile(rb'[\[\]{}",]')
STRING_TAIL = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class EventsError(Exception):
    """The document is not a readable trace; ``reason`` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def invalid(e: Exception) -> EventsError:
    return EventsError(f"invalid or truncated JSON ({e}); re-export the trace or check the copy")


def json_kind(first: int) -> str:
    return {ord("{"): "an object", ord("["): "an array", ord('"'): "a string",
            ord("t"): "a boolean", ord("f"): "a boolean", ord("n"): "null"}.get(first, "a number")


def byte_at(win: Window, pos: int) -> tuple[int, int] | None:
    """The first non-blank byte at or after stream offset ``pos`` and its offset; None at the
    end of the stream."""
    m = search(win, NON_BLANK, pos)
    return None if m is None else (m.start() + win.base, win.buf[m.start()])


def search(win: Window, pattern: re.Pattern[bytes], pos: int) -> re.Match[bytes] | None:
    """First match at or after stream offset ``pos``, reading on as needed (match offsets are
    relative to the window's buffer at return)."""
    while True:
        m = pattern.search(win.buf, max(pos - win.base, 0))
        if m is not None or win.eof:
            return m
        win.ensure(win.end + 1)


def array_end(win: Window, begin: int, err: msgspec.DecodeError) -> int | None:
    """When ``err`` says trailing characters follow a value decoded from ``begin``, the stream
    offset of the ``]`` that closed it."""
    m = TRAILING.search(str(err))
    if m is None:
        return None
    rel = begin - win.base
    end = win.buf.rfind(b"]", rel, rel + int(m.group(1)))
    return end + win.base if end > rel else None


def scan(buf: bytearray, pos: int, min_pos: int) -> tuple[str, int]:
    """From ``pos`` (between events, outside any string), the first comma between two events
    at or after ``min_pos`` (``("comma", offset)``) or the array's closing bracket
    (``("end", offset)``); ``("truncated", -1)`` when the data ends first. Offsets in ``buf``.
    Tracks nesting and strings in Python: the slow path, for pathological names."""
    depth = 1
    while True:
        m = STRUCTURAL.search(buf, pos)
        if m is None:
            return TRUNCATED, -1
        i = m.start()
        c = buf[i]
        pos = i + 1
        if c == 0x22:  # "
            t = STRING_TAIL.match(buf, pos)
            if t is None:
                return TRUNCATED, -1
            pos = t.end()
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
            if depth == 0:
                return "end", i
        elif depth == 1 and i >= min_pos:
            return "comma", i


