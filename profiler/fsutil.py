"""Opening a file that must be a regular file, without ever blocking on one that is not.

``open()`` of a FIFO for reading waits until a writer appears, so a FIFO (or a device)
where a manifest or a counter file belongs would hang the reader. :func:`open_regular` opens
with ``O_NONBLOCK`` (which makes opening a FIFO return at once), checks the descriptor with
``fstat`` (no race between a check and the open) and hands back a blocking descriptor of a
regular file, or raises :class:`NotRegularFile` naming what it found instead.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["NotRegularFile", "file_kind", "not_regular", "open_regular", "read_regular"]


class NotRegularFile(OSError):
    """A path that is a FIFO, a device, a socket or a directory; ``str()`` says which."""


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at ``path`` (symlinks followed);
    :class:`NotRegularFile` for anything else, :class:`OSError` as ``os.open`` raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the regular file at ``path`` (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file (symlinks followed), in words, or None when it is
    one; ``FileNotFoundError`` propagates (a file that went away is not damage). For
    listings that must name odd entries without opening them."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as e:
        return "a symlink loop" if e.errno == errno.ELOOP else f"cannot stat ({e.strerror})"
    return None if stat.S_ISREG(mode) else file_kind(mode)
