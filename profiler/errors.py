"""Errors a user can act on. Each names the offending input and says how to fix it."""

from __future__ import annotations

import errno
import os

__all__ = ["DualscopeError", "InputError", "RunFormatError", "OUTPUT_ERRNOS", "io_error",
           "is_output_error"]


class DualscopeError(Exception):
    """Base class; the CLI prints ``str(err)`` on one line and exits with :attr:`exit_code`."""

    exit_code = 1


class InputError(DualscopeError):
    """Bad input from the user: a malformed trace, a path that exists, an invalid option."""

    exit_code = 2


class RunFormatError(InputError):
    """A run directory that cannot be read: missing manifest, newer schema, bad segment."""


#: errors that say "the place being written to cannot take it", whatever file the OS names
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})

#: errno -> (reason, fix, fix when the path came from an option ``{flag}``)
_IO_FIXES = {
    errno.ENOSPC: ("no space left on device", "free space there",
                   "free space there or choose another {flag}"),
    errno.EDQUOT: ("disk quota exceeded", "free space there",
                   "free space there or choose another {flag}"),
    errno.EFBIG: ("file too large for this file system", "", "choose another {flag}"),
    errno.EROFS: ("read-only file system", "remount it read-write",
                  "choose a writable {flag}"),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path", "check {flag}"),
    errno.EISDIR: ("is a directory", "", "give a file name"),
    errno.EACCES: ("permission denied", "check its permissions",
                   "choose a location you can write to"),
    errno.EPERM: ("operation not permitted", "check its permissions",
                  "choose a location you can write to"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "fix the link",
                  "fix the link"),
    errno.ENAMETOOLONG: ("file name too long", "", "choose a shorter {flag}"),
    errno.ENOENT: ("no such file or directory", "check the path", "check {flag}"),
}


def is_output_error(err: OSError, written: str | os.PathLike[str] | None) -> bool:
    """Whether ``err`` came from writing the output (``written``: the temporary file or
    directory being written; None while it is being created) and not from reading an input:
    an errno of :data:`OUTPUT_ERRNOS`, or a file name inside ``written``."""
    if err.errno in OUTPUT_ERRNOS or written is None:
        return True
    name = err.filename
    return isinstance(name, str) and name.startswith(os.fspath(written))


def io_error(path: str | os.PathLike[str], err: OSError, doing: str = "write",
             *, flag: str | None = "--out") -> InputError:
    """The one-line :class:`InputError` for an :class:`OSError` on a path the user gave:
    ``"PATH: cannot write (no space left on device); free space there or choose another
    --out"``. ``path`` is the user's path (not a temporary file beside it); ``flag`` the
    option it came from (None: an argument); the reason comes from the errno, also when
    Arrow wrapped it in its own message."""
    code = err.errno
    if code in _IO_FIXES:
        reason, fix, fix_flag = _IO_FIXES[code]
        fix = fix_flag.format(flag=flag) if flag else fix
        return InputError(f"{path}: cannot {doing} ({reason}){'; ' + fix if fix else ''}")
    why = (err.strerror or os.strerror(code)) if code else (str(err) or type(err).__name__)
    return InputError(f"{path}: cannot {doing} ({why})")
