"""Find the trace files of an import and open one (see :mod:`.jsonscan` for the parsing).

A directory holds one Kineto / Chrome trace per rank: ``*.json``, ``*.json.gz`` (which covers
``*.pt.trace.json`` and ``*.pt.trace.json.gz``). Hidden files and sub-directories are skipped;
any other file makes the import fail, so a stray file is never silently taken for a rank.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from .jsonscan import TraceSplit, iter_event_chunks, split_trace

__all__ = ["TRACE_SUFFIXES", "TraceSource", "find_trace_files", "rank_from_filename", "load_trace"]

TRACE_SUFFIXES = (".json", ".json.gz")
_RANK_IN_NAME = re.compile(r"(?i)(?<![a-z])rank[_-]?(\d+)(?!\d)")


def _is_trace_name(name: str) -> bool:
    return name.endswith(TRACE_SUFFIXES)


def find_trace_files(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into the list of trace files, in a stable order.

    Raises :class:`InputError` for a missing path, an empty directory or a directory that
    holds a file that is not a trace."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = []
            for entry in sorted(os.listdir(path)):
                if entry.startswith("."):
                    continue
                p = path / entry
                if p.is_dir():
                    continue
                if not _is_trace_name(entry):
                    raise InputError(
                        f"{p}: not a trace file (want *.json or *.json.gz) in trace folder "
                        f"{path}; move it out of the folder or pass the trace files one by one"
                    )
                found.append(p)
            if not found:
                raise InputError(f"{path}: no trace files (*.json, *.json.gz) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def rank_from_filename(path: Path) -> int | None:
    """``trace_rank3.json``, ``rank_3.pt.trace.json``, ``rank-3.json.gz`` -> 3."""
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


_NON_BLANK = re.compile(rb"\S")


class TraceSource:
    """One trace file in memory: its metadata (top-level keys other than ``traceEvents``)
    and its events, handed out in chunks by :meth:`chunks` (see :mod:`.jsonscan`)."""

    def __init__(self, path: Path, buf: bytearray, split: TraceSplit | None,
                 doc: dict[str, Any] | None) -> None:
        self.path = path
        self._buf = buf
        self._split = split
        self._doc = doc
        self.meta: dict[str, Any] = (
            split.meta if split is not None
            else {k: v for k, v in (doc or {}).items() if k != "traceEvents"}
        )

    def chunks(self) -> Iterator[list[Any]]:
        """The events, a list at a time (one list when the file was parsed whole).
        May raise :class:`ChunkingFailed`; then call :meth:`parse_whole` and start over."""
        if self._split is not None:
            yield from iter_event_chunks(self._buf, self._split)
        elif self._doc is not None:
            yield self._doc["traceEvents"]

    def parse_whole(self) -> TraceSource:
        """The same file parsed with one ``orjson.loads`` (no chunking)."""
        return TraceSource(self.path, self._buf, None, _parse_whole(self.path, self._buf))

    def release(self) -> None:
        self._buf = bytearray()
        self._doc = None


def _parse_whole(path: Path, buf: bytearray) -> dict[str, Any]:
    try:
        doc = orjson.loads(buf)
    except orjson.JSONDecodeError as e:
        raise InputError(
            f"{path}: invalid or truncated JSON ({e}); re-export the trace or check the copy"
        ) from None
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    if not isinstance(doc, dict):
        raise InputError(f"{path}: top level is a JSON {type(doc).__name__}, not a trace object")
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        raise InputError(
            f"{path}: no traceEvents list; this is not a Kineto / Chrome trace "
            "(export one with prof.export_chrome_trace)"
        )
    if not events:
        raise InputError(f"{path}: traceEvents is empty; nothing to import")
    return doc


def _read(path: Path) -> bytearray:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    buf = bytearray()
                    with gzip.GzipFile(fileobj=f) as gz:
                        while block := gz.read(1 << 22):
                            buf += block
                    return buf
                except (OSError, EOFError, zlib.error) as e:
                    raise InputError(
                        f"{path}: broken gzip file ({e}); re-export or re-copy it"
                    ) from None
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
            del buf[n:]
            return buf
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def load_trace(path: Path) -> TraceSource:
    """Read one trace file (plain or gzip JSON) and locate its events.

    Raises :class:`InputError` naming the file for an unreadable, empty, truncated or
    invalid file and for one without trace events. A bare JSON array of events is accepted
    as ``{"traceEvents": [...]}``."""
    buf = _read(path)
    if _NON_BLANK.search(buf) is None:
        raise InputError(f"{path}: empty file; re-export the trace from torch.profiler")
    split = split_trace(buf)
    if split is not None and _NON_BLANK.search(buf, split.start + 1, split.end) is None:
        raise InputError(f"{path}: traceEvents is empty; nothing to import")
    if split is None:
        return TraceSource(path, buf, None, _parse_whole(path, buf))
    return TraceSource(path, buf, split, None)
