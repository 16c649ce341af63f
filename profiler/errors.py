"""Errors a user can act on. Each names the offending input and says how to fix it."""

from __future__ import annotations

__all__ = ["DualscopeError", "InputError", "RunFormatError"]


class DualscopeError(Exception):
    """Base class; the CLI prints ``str(err)`` on one line and exits with :attr:`exit_code`."""

    exit_code = 1


class InputError(DualscopeError):
    """Bad input from the user: a malformed trace, a path that exists, an invalid option."""

    exit_code = 2


class RunFormatError(InputError):
    """A run directory that cannot be read: missing manifest, newer schema, bad segment."""
