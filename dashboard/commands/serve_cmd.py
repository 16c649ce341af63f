"""``dualscope dashboard [RUNS_DIR]``: serve the dashboard over the runs under RUNS_DIR.

Binds 127.0.0.1 by default; never runs Dash's debug mode unless ``--debug`` is given. For a
multi-user deployment run the WSGI app under gunicorn instead (docs/dashboard.md)."""

from __future__ import annotations

import click

__all__ = ["command", "serve"]


def serve(runs_dir: str, host: str, port: int, *, debug: bool = False,
          live_interval_ms: int = 1000) -> None:
    """Build the app and serve it with Flask's threaded server until interrupted."""
    from ..app import create_app

    app = create_app(runs_dir, live_interval_ms=live_interval_ms, warm=True)
    app.run(host=host, port=port, debug=debug, use_reloader=False, threaded=True)


@click.command("dashboard")
@click.argument("runs_dir", default="runs", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option("--refresh-ms", default=1000, show_default=True, type=click.IntRange(200, 60000),
              help="Live refresh interval.")
@click.option("--debug", is_flag=True, help="Dash debug mode (never on a shared host).")
def command(runs_dir: str, host: str, port: int, refresh_ms: int, debug: bool) -> None:
    """Serve the dashboard over the run directories under RUNS_DIR (default ./runs)."""
    click.echo(f"dualscope dashboard: {runs_dir} at http://{host}:{port}/  (Ctrl-C to stop)")
    serve(runs_dir, host, port, debug=debug, live_interval_ms=refresh_ms)
