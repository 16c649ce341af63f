"""The ``dualscope`` command line. Commands live in :mod:`profiler.commands` and other
packages and are imported only when invoked, so ``dualscope --help`` stays fast and a command
whose optional dependency is missing does not break the others."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from profiler import __version__
from profiler.errors import DualscopeError

__all__ = ["main", "cli"]

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


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="dualscope", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("dualscope: aborted", err=True)
        sys.exit(130)
    except DualscopeError as e:
        click.echo(f"dualscope: error: {e}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
