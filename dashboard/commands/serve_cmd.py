"""``dualscope dashboard [RUNS_DIR]``: serve the dashboard over the runs under RUNS_DIR.

Binds 127.0.0.1 by default; never runs Dash's debug mode unless ``--debug`` is given. For a
multi-user deployment run the WSGI app under gunicorn instead (docs/dashboard.md).

``--prometheus URL`` makes the Links and SMs pages read their cluster views from that
Prometheus (:mod:`dashboard.promsource`); it sets ``$DUALSCOPE_PROMETHEUS`` (and
``..._STEP`` / ``..._TIMEOUT``), the variables the gunicorn factory reads too."""

from __future__ import annotations

import os

import click

from profiler.freshness import FreshnessPolicy

from ..defaults import LIVE_SPAN_STEPS, REFRESH_APART, REFRESH_DUTY

__all__ = ["command", "serve"]


def use_prometheus(url: str | None, step_s: float = 10.0, timeout_s: float = 5.0) -> None:
    """Point the apps this process builds at ``url`` (None: the run files only), through
    the environment :meth:`dashboard.promsource.PromSource.from_env` reads."""
    from ..promsource import ENV_STEP, ENV_TIMEOUT, ENV_URL, PromSource

    if not url:
        for key in (ENV_URL, ENV_STEP, ENV_TIMEOUT):
            os.environ.pop(key, None)
        return
    PromSource(url, min_step_s=step_s, timeout_s=timeout_s)  # refuse a bad URL now
    os.environ.update({ENV_URL: url, ENV_STEP: f"{step_s:g}", ENV_TIMEOUT: f"{timeout_s:g}"})


def serve(runs_dir: str, host: str, port: int, *, debug: bool = False,
          live_interval_ms: int = 1000, freshness: FreshnessPolicy | None = None,
          live_span_steps: int = LIVE_SPAN_STEPS, refresh_duty: float = REFRESH_DUTY,
          refresh_apart: bool = REFRESH_APART) -> None:
    """Build the app and serve it with Flask's threaded server until interrupted.
    ``live_span_steps``: 0 holds every span of a live run."""
    from ..app import create_app
    from ..heap import settle

    app = create_app(runs_dir, live_interval_ms=live_interval_ms, warm=True, freshness=freshness,
                     live_span_steps=live_span_steps or None, refresh_duty=refresh_duty,
                     refresh_apart=refresh_apart)
    settle()  # the long-lived heap frozen, young collections rarer (dashboard.heap)
    app.run(host=host, port=port, debug=debug, use_reloader=False, threaded=True)


@click.command("dashboard")
@click.argument("runs_dir", default="runs", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option("--refresh-ms", default=1000, show_default=True, type=click.IntRange(200, 60000),
              help="Live refresh interval.")
@click.option("--stale-after", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="A live run is STALE after max(this, 3 median step times) s without new data.")
@click.option("--dead-after", default=300.0, show_default=True, type=click.FloatRange(0.1),
              help="...and DEAD after this many s without new data although its writer beats.")
@click.option("--heartbeat-timeout", default=15.0, show_default=True,
              type=click.FloatRange(0.1),
              help="A writer whose heartbeat is older than this (s) is gone: DEAD.")
@click.option("--prometheus", "prometheus", metavar="URL", default=None,
              help="Prometheus base URL (http://HOST:9090) the Links and SMs pages read their "
                   "cluster views from; the run's files when it fails. Default: "
                   "$DUALSCOPE_PROMETHEUS.")
@click.option("--prometheus-step", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Shortest query step (s): the agents' scrape interval.")
@click.option("--prometheus-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1), help="Per-query timeout (s).")
@click.option("--live-span-steps", default=LIVE_SPAN_STEPS, show_default=True,
              type=click.IntRange(0),
              help="A live run's spans are held for its newest this many steps (0: all); the "
                   "whole-run numbers come from its step results.")
@click.option("--refresh-duty", default=REFRESH_DUTY, show_default=True,
              type=click.FloatRange(0.05, 1.0),
              help="The share of its time the thread that recomputes a live run's analyses "
                   "and ideal timeline may compute (1: always, when they are stale); less "
                   "leaves more CPU to the pages' callbacks, and the views refresh less often.")
@click.option("--refresh-in-process", is_flag=True,
              help="Recompute a live run's stale views on a thread of the server itself; by "
                   "default each is computed in a forked child at the lowest CPU priority, so "
                   "the pages' callbacks do not wait for it.")
@click.option("--debug", is_flag=True, help="Dash debug mode (never on a shared host).")
def command(runs_dir: str, host: str, port: int, refresh_ms: int, stale_after: float,
            dead_after: float, heartbeat_timeout: float, prometheus: str | None,
            prometheus_step: float, prometheus_timeout: float, live_span_steps: int,
            refresh_duty: float, refresh_in_process: bool, debug: bool) -> None:
    """Serve the dashboard over the run directories under RUNS_DIR (default ./runs)."""
    from ..promsource import ENV_URL, PromSource

    url = prometheus or os.environ.get(ENV_URL) or None
    try:
        if prometheus:
            use_prometheus(prometheus, prometheus_step, prometheus_timeout)
        else:  # the environment's settings as they are; a bad URL is refused now
            PromSource.from_env()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--prometheus") from None
    click.echo(f"dualscope dashboard: {runs_dir} at http://{host}:{port}/  (Ctrl-C to stop)"
               + (f"; link and SM counters from Prometheus at {url}" if url else ""))
    policy = FreshnessPolicy(stale_min_s=stale_after, dead_after_s=dead_after,
                             heartbeat_timeout_s=heartbeat_timeout)
    serve(runs_dir, host, port, debug=debug, live_interval_ms=refresh_ms, freshness=policy,
          live_span_steps=live_span_steps, refresh_duty=refresh_duty,
          refresh_apart=not refresh_in_process)
