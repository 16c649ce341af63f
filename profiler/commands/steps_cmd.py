"""``dualscope steps RUN``: compute a run's per-step results into ``RUN/derived/steps`` (what
the live step engine does while a run trains) and print the run's headline numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..report import print_json, print_table

if TYPE_CHECKING:
    from ..steps import StepEngine

__all__ = ["command"]


@click.command("steps")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--final/--live", default=True, show_default=True,
              help="Treat the run as ended (every step complete), or compute only the steps "
                   "complete now (a run still writing).")
@click.option("--ideal-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Ideal timeline of every n-th step (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--follow", is_flag=True,
              help="Keep the results up with a live run: update every --interval until the "
                   "run's manifest says it finished or failed (or SIGTERM / Ctrl-C).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between updates with --follow.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="With --follow: serve each rank's newest step time and bubble ratio on "
                   "/metrics at this port for Prometheus (0: any free port; the URL is "
                   "printed first).")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True,
              help="Address /metrics binds (0.0.0.0: every interface).")
def command(run: str, final: bool, ideal_every: int, as_json: bool, follow: bool,
            interval: float, metrics_port: int | None, metrics_addr: str) -> None:
    """Per-step bubbles, overlap, SM split, bandwidth by phase, straggler scores and the ideal
    timeline, computed once and kept in RUN/derived/steps (steps already there are not
    recomputed)."""
    from ..errors import InputError
    from ..steps import EngineLocked, StepEngine, kpis, step_times

    if metrics_port is not None and not follow:
        raise InputError("--metrics-port serves a live run's step series: add --follow")
    try:
        engine = StepEngine(run, ideal_every=ideal_every)
    except EngineLocked as e:
        raise InputError(f"{run}: {e}; follow its results in {run}/derived/steps instead "
                         "(the dashboard does)") from None
    if follow:
        with engine:
            _follow(engine, run, interval, metrics_port, metrics_addr, as_json)
        return
    with engine:
        new = engine.update(final=final)
        tables = engine.tables()
    head = kpis(tables)
    if as_json:
        print_json({"run": run, "new_rows": {k: len(v) for k, v in new.items()}, "kpis": head,
                    "late_rows": engine.late_rows, "notes": engine.notes})
        return
    bub = tables.get("bubbles")
    if bub is not None:
        print_table("steps", step_times(bub).to_dict(orient="records"))
    print_table("run", [{k: v for k, v in head.items()
                         if k not in ("straggler_ranks", "straggler_ranks_any_step", "ideal_how")}])
    click.echo(f"straggler ranks (whole run, as analyze): {head['straggler_ranks'] or 'none'}; "
               f"flagged in some step: {head['straggler_ranks_any_step'] or 'none'}")
    click.echo(f"ideal bubble: {head['ideal_how']}")


def _follow(engine: StepEngine, run: str, interval: float, port: int | None, addr: str,
            as_json: bool) -> None:
    """``--follow``: update until the run ends or a signal; serve /metrics when asked."""
    import signal
    import threading

    from ..metrics_http import MetricsServer
    from ..steps.exporter import StepSeries
    from ..steps.follow import follow

    series = StepSeries()
    server = None
    if port is not None:
        server = MetricsServer(series.wsgi_app(), port, addr, name="dualscope-steps-metrics")
        click.echo(server.url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def on_update(new: dict, seconds: float) -> None:  # type: ignore[type-arg]
        series.update(new, engine.rank_nodes, duration_s=seconds, late_rows=engine.late_rows)
        steps = new.get("steps")
        if steps is not None and len(steps):
            if as_json:
                print_json({"update_s": round(seconds, 3), "new_rows": {
                    k: len(v) for k, v in new.items()}, "newest_step": int(steps["step"].max())})
            else:
                click.echo(f"step results up to step {int(steps['step'].max())} "
                           f"({len(steps)} pipeline steps, {seconds:.2f} s)")

    try:
        why = follow(engine, interval_s=interval, stop=stop, on_update=on_update)
    finally:
        if server is not None:
            server.close()
    click.echo(f"{run}: stopped following ({why})")
