"""Find the trace files of an import and open one (see :mod:`.jsonscan` for the parsing).

A directory holds one Kineto / Chrome trace per rank: ``*.json``, ``*.json.gz`` (which covers
``*.pt.trace.json`` and ``*.pt.trace.json.gz``). Hidden files and sub-directories are skipped;
any other entry makes the import fail, so a stray file is never silently taken for a rank.
Only regular files are ever opened: a FIFO, socket or device is named and refused without
being opened (opening a FIFO would block), and so are symlink loops and dangling symlinks.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from ..errors import InputError
from .events import EVENTS, Event, TraceMeta, event_error, read_meta
from .jsonscan import ChunkDecodeError, EventsError, Layout, find_events, iter_event_chunks

__all__ = ["TRACE_SUFFIXES", "TraceSource", "find_trace_files", "rank_from_filename",
           "load_trace", "load_document"]

TRACE_SUFFIXES = (".json", ".json.gz")
_RANK_IN_NAME = re.compile(r"(?i)(?<![a-z])rank[_-]?(\d+)(?!\d)")


def _is_trace_name(name: str) -> bool:
    return name.endswith(TRACE_SUFFIXES)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


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
    return InputError(f"{path}: {_kind(mode)}, not a trace file{where} (it was not opened)")


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


def _read(path: Path) -> bytearray:
    """The file's bytes (gzip decompressed). Opened non-blocking and checked to be a regular
    file before any read, so a FIFO swapped in after discovery cannot hang the import."""
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
        with os.fdopen(fd, "rb", closefd=False) as f:
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
            buf = bytearray(st.st_size)
            n = f.readinto(buf)
            del buf[n:]
            return buf
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


class TraceSource:
    """One trace in memory, read by :meth:`chunks` (see :mod:`.jsonscan`); :attr:`meta` (the
    top-level keys the importer uses) is known once the events have been read, since keys may
    follow them."""

    def __init__(self, path: Path, buf: bytearray, lay: Layout) -> None:
        self.path = path
        self.nbytes = len(buf)
        self._buf = buf
        self._layout = lay
        self._meta: TraceMeta | None = None

    @property
    def meta(self) -> TraceMeta:
        if self._meta is None:
            if self._layout.end < 0:
                raise RuntimeError("TraceSource.meta is known once chunks() has been read")
            self._meta = read_meta(self.path, self._layout.keys)
        return self._meta

    def chunks(self, on_bytes: Callable[[int], None] | None = None
               ) -> Iterator[tuple[int, list[Event]]]:
        """``(index of the first event, events)`` a chunk at a time. Raises
        :class:`InputError` naming the file and the event for an event that does not decode
        (a field of the wrong type, invalid UTF-8, ...) or a document that is not valid JSON."""
        first = 0
        try:
            for chunk in iter_event_chunks(self._buf, self._layout, EVENTS.decode,
                                           on_bytes=on_bytes):
                yield first, chunk
                first += len(chunk)
        except ChunkDecodeError as e:
            raise _locate(self.path, e) from None
        except EventsError as e:
            raise InputError(f"{self.path}: {e.reason}") from None
        except RecursionError:
            raise _too_deep(self.path) from None

    def release(self) -> None:
        self._buf = bytearray()


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
    """Read one trace file (plain or gzip JSON) and locate its events.

    Raises :class:`InputError` naming the file for an unreadable, empty, truncated or
    invalid file and for one without trace events. A bare JSON array of events is accepted
    as ``{"traceEvents": [...]}``."""
    return load_document(path, _read(path))


def load_document(path: Path, buf: bytearray) -> TraceSource:
    """A trace document already in memory (``path`` names it in messages)."""
    try:
        lay = find_events(buf)
    except EventsError as e:
        raise InputError(f"{path}: {e.reason}") from None
    except RecursionError:
        raise _too_deep(path) from None
    return TraceSource(path, buf, lay)


def _too_deep(path: Path) -> InputError:
    return InputError(f"{path}: invalid trace (JSON nested too deeply to be a trace); "
                      "re-export the trace or check the copy")
