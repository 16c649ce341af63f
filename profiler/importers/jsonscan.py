"""Parse a Chrome-trace JSON document in bounded memory.

``orjson.loads`` of a whole trace builds Python objects several times the file's size.
Instead, :func:`split_trace` finds the top-level ``traceEvents`` array and parses the rest of
the document as metadata, and :func:`iter_event_chunks` hands the events to orjson about
``chunk_bytes`` at a time, in place: the comma that ends a chunk is overwritten with ``]``
(and restored to ``[`` as the next chunk's opening bracket), so no bytes are copied and only
one chunk of events is alive as Python objects at a time.

Cut points are found with a regular expression (``}``, comma, ``{`` with optional blanks
between events) and *validated by the parse itself*: a cut that is not between two events
of the array (inside a string, or inside a nested object) always leaves the chunk with an
unclosed string, object or array, so orjson rejects it and the next candidate is tried.
Whatever cannot be split this way (no top-level ``traceEvents``, a truncated file, more
than a few rejected cuts) raises :class:`ChunkingFailed` and the caller parses the whole
buffer with one ``orjson.loads`` -- which is also what reports a broken file's exact error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ChunkingFailed", "TraceSplit", "split_trace", "iter_event_chunks"]

_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_SEP = re.compile(rb"\}\s*,\s*\{")
_MAX_END_TRIES = 64
_MAX_CUT_TRIES = 8


class ChunkingFailed(Exception):
    """The buffer could not be split safely; parse it whole instead."""


@dataclass(frozen=True)
class TraceSplit:
    """``start`` / ``end``: offsets of the ``[`` and ``]`` of the top-level ``traceEvents``
    array; ``meta``: the rest of the document, parsed (without ``traceEvents``)."""

    start: int
    end: int
    meta: dict[str, Any]


def split_trace(buf: bytearray) -> TraceSplit | None:
    """Locate the top-level ``traceEvents`` array of the JSON object in ``buf``; None when
    it cannot be found safely (the caller then parses the whole buffer)."""
    m = _KEY.search(buf)
    if m is None:
        return None
    start = m.end() - 1
    prefix = bytes(buf[:m.start()]) + b'"traceEvents":[]'
    hi = len(buf)
    for _ in range(_MAX_END_TRIES):
        end = buf.rfind(b"]", start + 1, hi)
        if end < 0:
            return None
        hi = end
        rest = bytes(buf[end + 1:end + 65]).lstrip()
        if rest[:1] not in (b",", b"}"):
            continue
        try:
            meta = orjson.loads(prefix + bytes(buf[end + 1:]))
        except orjson.JSONDecodeError:
            continue
        if isinstance(meta, dict) and meta.get("traceEvents") == []:
            del meta["traceEvents"]
            return TraceSplit(start, end, meta)
        return None
    return None


def iter_event_chunks(buf: bytearray, split: TraceSplit,
                      chunk_bytes: int = 2 << 20) -> Iterator[list[Any]]:
    """Yield the events of ``buf`` chunk by chunk, each a list parsed by orjson. Mutates
    ``buf`` while running and restores it. Raises :class:`ChunkingFailed` (possibly after
    some chunks were yielded) when no valid cut is found."""
    view = memoryview(buf)
    begin = split.start  # offset of the chunk's opening bracket ('[' in the buffer)
    try:
        while True:
            if split.end - begin <= chunk_bytes * 3 // 2:
                try:
                    last = orjson.loads(view[begin:split.end + 1])
                except orjson.JSONDecodeError:
                    raise ChunkingFailed from None
                yield last if isinstance(last, list) else [last]
                return
            chunk = None
            pos = begin + chunk_bytes
            for _ in range(_MAX_CUT_TRIES):
                m = _SEP.search(buf, pos, split.end)
                if m is None:
                    break
                comma = buf.index(b",", m.start(), m.end())
                buf[comma] = ord("]")
                try:
                    chunk = orjson.loads(view[begin:comma + 1])
                except orjson.JSONDecodeError:
                    chunk = None
                buf[comma] = ord("[")
                if chunk is not None:
                    if begin != split.start:
                        buf[begin] = ord(",")
                    begin = comma
                    break
                buf[comma] = ord(",")
                pos = m.end() - 1
            if chunk is None:
                if _SEP.search(buf, pos, split.end) is None and pos < split.end:
                    # no separator left: the remainder is one chunk
                    chunk_bytes = split.end - begin
                    continue
                raise ChunkingFailed
            yield chunk
    finally:
        if begin != split.start:
            buf[begin] = ord(",")
        view.release()
