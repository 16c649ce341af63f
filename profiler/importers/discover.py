"""Find the trace files of an import and open one (see :mod:`.jsonscan` for the parsing).

A directory holds one Kineto / Chrome trace per rank: ``*.json``, ``*.json.gz`` (which covers
``*.pt.trace.json`` and ``*.pt.trace.json.gz``). Hidden files and sub-directories are skipped;
any other entry makes the import fail, so a stray file is never silently taken for a rank.
Only regular files are ever opened: a FIFO, socket or device is named and refused without
being opened (opening a FIFO would block), and so are symlink loops and dangling symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..errors import InputError
from ..fsutil import file_kind
from .events import EVENTS, Event, TraceMeta, event_error, read_meta
from .jsonscan import (
    ChunkDecodeError,
    EventsError,
    Layout,
    Window,
    find_events,
    iter_event_chunks,
)

__all__ = ["TRACE_SUFFIXES", "TraceSource", "find_trace_files", "rank_from_filename",
           "load_trace", "load_document"]

TRACE_SUFFIXES = (".json", ".json.gz")
_RANK_IN_NAME = re.compile(r"(?i)(?<![a-z])rank[_-]?(\d+)(?!\d)")


def _is_trace_name(name: str) -> bool:
    return name.endswith(TRACE_SUFFIXES)


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` (following symlinks) with one line for each way it fails."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path}: symlink loop (the link leads back to itself); fix or "
                             "remove the link") from None
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise InputError(f"{path}: dangling symlink (points to {os.readlink(path)}, which "
                             "does not exist); fix or remove the link") from None
        if e.errno == errno.ENOENT:
            raise InputError(f"{path}: no such file or directory") from None
        if e.errno == errno.ENOTDIR:
            raise InputError(f"{path}: a part of the path is not a directory") from None
        raise InputError(f"{path}: cannot access ({e.strerror or e})") from None


def _not_regular(path: Path, mode: int, folder: Path | None) -> InputError:
    where = f" in trace folder {folder}; move it out of the folder" if folder else \
        "; pass a trace file (*.json, *.json.gz) or a folder of them"
    return InputError(f"{path}: {file_kind(mode)}, not a trace file{where} (it was not opened)")


def find_trace_files(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into the list of trace files, in a stable order.

    Raises :class:`InputError` for a missing path, an empty directory, a directory that
    holds a file that is not a trace, and anything that is not a regular file or directory
    (never opened)."""
    files: list[tuple[Path, os.stat_result]] = []
    for raw in inputs:
        path = Path(raw)
        st = _stat(path)
        if stat.S_ISDIR(st.st_mode):
            try:
                entries = sorted(os.listdir(path))
            except OSError as e:
                raise InputError(f"{path}: cannot list the folder ({e.strerror or e})") from None
            found = []
            for entry in entries:
                if entry.startswith("."):
                    continue
                p = path / entry
                est = _stat(p)
                if stat.S_ISDIR(est.st_mode):
                    continue
                if not stat.S_ISREG(est.st_mode):
                    raise _not_regular(p, est.st_mode, path)
                if not _is_trace_name(entry):
                    raise InputError(
                        f"{p}: not a trace file (want *.json or *.json.gz) in trace folder "
                        f"{path}; move it out of the folder or pass the trace files one by one"
                    )
                found.append((p, est))
            if not found:
                raise InputError(f"{path}: no trace files (*.json, *.json.gz) in this folder")
            files.extend(found)
        elif stat.S_ISREG(st.st_mode):
            files.append((path, st))
        else:
            raise _not_regular(path, st.st_mode, None)
    seen: set[tuple[int, int]] = set()
    unique = []
    for f, st in files:
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def rank_from_filename(path: Path) -> int | None:
    """``trace_rank3.json``, ``rank_3.pt.trace.json``, ``rank-3.json.gz`` -> 3."""
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


@dataclass
class _Open:
    """An open trace: its :class:`~.jsonscan.Window`, how far the file has been read (on
    disk: compressed bytes for gzip) and how to close it."""

    window: Window
    position: Callable[[], int]
    close: Callable[[], None]


def _open(path: Path) -> _Open:
    """Open a trace file for streaming (gzip decompressed on the fly). Opened non-blocking
    and checked to be a regular file before any read, so a FIFO swapped in after discovery
    cannot hang the import."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            _stat(path)  # names the loop / dangling link / missing file
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode, None)
        os.set_blocking(fd, True)
        raw = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    try:
        head = raw.read(2)
        raw.seek(0)
    except OSError as e:
        raw.close()
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if head == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=raw)

        def close() -> None:
            with contextlib.suppress(Exception):
                gz.close()
            raw.close()

        return _Open(Window(gz, error=lambda e: f"broken gzip file ({e}); re-export or re-copy "
                                                 "it"), raw.tell, close)
    return _Open(Window(raw, error=lambda e: f"cannot read ({e})", size=st.st_size), raw.tell,
                 raw.close)


class TraceSource:
    """One trace, read by :meth:`chunks` a window at a time (see :mod:`.jsonscan`);
    :attr:`meta` (the top-level keys the importer uses) is known once the events have been
    read, since keys may follow them. ``nbytes``: its size (on disk)."""

    def __init__(self, path: Path, opener: Callable[[], _Open], nbytes: int) -> None:
        self.path = path
        self.nbytes = nbytes
        self._opener = opener
        self._layout: Layout | None = None
        self._meta: TraceMeta | None = None
        self._open: _Open | None = None
        self._open, self._layout = self._start()

    def _start(self) -> tuple[_Open, Layout]:
        """Open the file and locate its events (errors name the file)."""
        opened = self._opener()
        try:
            return opened, find_events(opened.window)
        except EventsError as e:
            opened.close()
            raise InputError(f"{self.path}: {e.reason}") from None
        except RecursionError:
            opened.close()
            raise _too_deep(self.path) from None
        except BaseException:
            opened.close()
            raise

    @property
    def meta(self) -> TraceMeta:
        if self._meta is None:
            if self._layout is None or self._layout.end < 0:
                raise RuntimeError("TraceSource.meta is known once chunks() has been read")
            self._meta = read_meta(self.path, self._layout.keys)
        return self._meta

    def chunks(self, on_bytes: Callable[[int], None] | None = None
               ) -> Iterator[tuple[int, list[Event]]]:
        """``(index of the first event, events)`` a chunk at a time (a second call reads the
        file again). Raises :class:`InputError` naming the file and the event for an event
        that does not decode (a field of the wrong type, invalid UTF-8, ...) or a document
        that is not valid JSON. ``on_bytes(n)``: n more bytes of the file read."""
        opened, lay = (self._open, self._layout) if self._open is not None else self._start()
        self._open = None
        assert lay is not None
        first = 0
        done = opened.position()

        def report(_n: int) -> None:
            nonlocal done
            if on_bytes is not None:
                now = opened.position()
                on_bytes(now - done)
                done = now

        try:
            for chunk in iter_event_chunks(opened.window, lay, EVENTS.decode, on_bytes=report):
                n = len(chunk)
                yield first, chunk
                del chunk  # (see iter_event_chunks)
                first += n
            self._layout = lay
        except ChunkDecodeError as e:
            raise _locate(self.path, e) from None
        except EventsError as e:
            raise InputError(f"{self.path}: {e.reason}") from None
        except RecursionError:
            raise _too_deep(self.path) from None
        finally:
            opened.close()

    def release(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _locate(path: Path, e: ChunkDecodeError) -> InputError:
    """The event of a failed chunk decode: the decoder's own path when it gives one, else the
    first event that fails on its own."""
    if isinstance(e.error, msgspec.ValidationError):
        return event_error(path, e.first_index, e.error)
    try:
        items = msgspec.json.decode(e.chunk, type=list[msgspec.Raw])
    except RecursionError:
        return _too_deep(path)
    except msgspec.DecodeError as err:
        return InputError(f"{path}: invalid JSON in events from index {e.first_index} ({err}); "
                          "re-export the trace or check the copy")
    for j, item in enumerate(items):
        try:
            msgspec.json.decode(item, type=Event)
        except RecursionError:
            return InputError(f"{path}: event {e.first_index + j}: nested too deeply; fix or "
                              "drop that event, or re-export the trace")
        except msgspec.DecodeError as err:
            return InputError(f"{path}: event {e.first_index + j}: {err}; fix or drop that "
                              "event, or re-export the trace")
    return InputError(f"{path}: events from index {e.first_index}: {e.error}")


def load_trace(path: Path) -> TraceSource:
    """Open one trace file (plain or gzip JSON) and locate its events.

    Raises :class:`InputError` naming the file for an unreadable, empty or invalid file and
    for one without trace events (a file damaged further on fails when its events are read).
    A bare JSON array of events is accepted as ``{"traceEvents": [...]}``."""
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    return TraceSource(path, lambda: _open(path), size)


def load_document(path: Path, data: bytes | bytearray) -> TraceSource:
    """A trace document already in memory (``path`` names it in messages)."""
    return TraceSource(path, lambda: _Open(Window.of(data), lambda: 0, lambda: None), len(data))


def _too_deep(path: Path) -> InputError:
    return InputError(f"{path}: invalid trace (JSON nested too deeply to be a trace); "
                      "re-export the trace or check the copy")
