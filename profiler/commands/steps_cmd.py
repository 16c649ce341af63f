"""``dualscope steps RUN``: compute a run's per-step results into ``RUN/derived/steps`` (what
the live step engine does while a run trains) and print the run's headline numbers."""

from __future__ import annotations

import click

from ..report import print_json, print_table

__all__ = ["command"]


@click.command("steps")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--final/--live", default=True, show_default=True,
              help="Treat the run as ended (every step complete), or compute only the steps "
                   "complete now (a run still writing).")
@click.option("--ideal-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Ideal timeline of every n-th step (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(run: str, final: bool, ideal_every: int, as_json: bool) -> None:
    """Per-step bubbles, overlap, SM split, bandwidth by phase, straggler scores and the ideal
    timeline, computed once and kept in RUN/derived/steps (steps already there are not
    recomputed)."""
    from ..steps import StepEngine, kpis, step_times

    with StepEngine(run, ideal_every=ideal_every) as engine:
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
    print_table("run", [{k: v for k, v in head.items() if k != "straggler_ranks"}])
    click.echo(f"straggler ranks (any step): {head['straggler_ranks'] or 'none'}")
