"""The ``dualscope`` command line. Commands live in :mod:`profiler.commands` and other
packages and are imported only when invoked, so ``dualscope --help`` stays fast and a command
whose optional dependency is missing does not break the others."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from profiler import __version__
from profiler.errors import DualscopeError, io_error

__all__ = ["main", "cli", "Terminated", "STOP_SIGNALS"]

#: command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "import": "profiler.commands.import_cmd:command",
    "export": "profiler.commands.export_cmd:command",
    "info": "profiler.commands.info_cmd:command",
    "compare": "profiler.commands.compare_cmd:command",
    "compact": "profiler.commands.info_cmd:compact_command",
    "verify": "profiler.commands.verify_cmd:command",
    "run-reference": "dualscope.commands.reference_cmd:command",
    "model": "profiler.commands.model_cmd:command",
    "analyze": "profiler.commands.analyze_cmd:command",
    "steps": "profiler.commands.steps_cmd:command",
    "probe": "probes.commands:command",
    "dashboard": "dashboard.commands.serve_cmd:command",
    "demo": "dualscope.commands.demo_cmd:command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dualscope")
def cli() -> None:
    """dualscope: a profiler and dashboard for DualPipe / expert-parallel MoE training."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that every ``with`` block and
    ``finally`` of the running command cleans up, as Ctrl-C's ``KeyboardInterrupt`` does.
    A :class:`BaseException`: ``except Exception`` must not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: the signals a command stops on, cleaning up; a service manager sends SIGTERM, a closed
#: terminal SIGHUP
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """For the command's duration (main thread only), the first of :data:`STOP_SIGNALS`
    raises (``KeyboardInterrupt`` for SIGINT, :class:`Terminated` for the others) and later
    ones do nothing, so they cannot cut the cleanup short. A command with its own handlers
    (``probe``, ``demo``) replaces them. The previous handlers come back when no signal
    came (when one did, the process is on its way out and a pending one must still find a
    harmless handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        if not fired:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _say(message: str) -> None:
    click.echo(f"dualscope: {message}", err=True)


def main(argv: list[str] | None = None) -> Any:
    """Run one command. Errors a user can act on are one line on stderr: exit status 2 for
    bad input (usage, data, an output that cannot be written), 1 for other failures;
    SIGINT / SIGTERM / SIGHUP stop it with everything cleaned up (130 / 143 / 129)."""
    try:
        with _stop_signals_raise():
            return cli.main(args=argv, prog_name="dualscope", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # 'dualscope' alone: the help text
        sys.exit(e.exit_code)
    except click.UsageError as e:
        ctx = e.ctx
        name = ctx.command_path.removeprefix("dualscope").strip() if ctx is not None else ""
        _say(f"error: {name + ': ' if name else ''}{e.format_message()}")
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _say("aborted")
        sys.exit(130)
    except Terminated as e:
        _say(f"stopped by {signal.Signals(e.signum).name}")
        sys.exit(128 + e.signum)
    except DualscopeError as e:
        _say(f"error: {e}")
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # the net under the commands, which name their paths themselves
        _say(f"error: {io_error(e.filename, e, 'access', flag=None) if e.filename else e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
