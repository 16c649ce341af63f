"""``dualscope info RUN`` and ``dualscope compact RUN``."""

from __future__ import annotations

import click

from ..report import print_json, print_table
from ..runinfo import run_info
from ..store import RunReader, compact

__all__ = ["command", "compact_command"]


@click.command("info")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(run: str, as_json: bool) -> None:
    """Ranks, steps, time span, lanes, span and counter counts, kernels and probe status."""
    info = run_info(RunReader(run))
    if as_json:
        print_json(info)
        return
    r, t = info["run"], info["time"]
    click.echo(f"run {r['run_id']}  source={r['source']}  status={r['status']}"
               f"{'  SYNTHETIC' if r['synthetic'] else ''}")
    click.echo(f"  {r['path']}")
    if r["description"]:
        click.echo(f"  {r['description']}")
    ranks = info["ranks"]
    click.echo(f"ranks: {len(ranks)} {_span(ranks)}   steps: {len(info['steps'])} "
               f"{_span(info['steps'])}   duration: {t['duration_s']:.6f} s")
    topo = {k: v for k, v in info["topology"].items() if v is not None}
    par = {k: v for k, v in info["parallel"].items() if v is not None}
    if topo:
        click.echo("topology: " + ", ".join(f"{k}={v}" for k, v in topo.items()))
    if par:
        click.echo("parallel: " + ", ".join(f"{k}={v}" for k, v in par.items()))
    s = info["spans"]
    click.echo(f"spans: {s['count']}  by lane: {s['by_lane']}  by kind: {s['by_kind']}")
    for lane, k in info["kernels"].items():
        click.echo(f"{lane} kernels: {k['count']} on streams {k['streams']}, busy {k['busy_s']:.6f} s, "
                   f"SMs min/median/max {k['sms_min']}/{k['sms_median']}/{k['sms_max']}")
        print_table(f"top {lane} kernels", k["top"], ["name", "count", "sms", "busy_s"])
    loss = info["train"]["loss"]
    if loss:
        click.echo(f"training: loss {loss[0]['loss']:.4f} -> {loss[-1]['loss']:.4f} over "
                   f"{len(loss)} steps (step {loss[0]['step']}..{loss[-1]['step']}), median step "
                   f"{info['train']['step_time_s_median']:.3f} s")
    c = info["counters"]
    click.echo(f"counters: {c['count']} samples; nodes {c['nodes']}; devices {c['devices']}")
    if info["probes"]:
        rows = [{"probe": k, **v} for k, v in info["probes"].items()]
        print_table("probes", rows, ["probe", "available", "reason"])
    notes = info["import_notes"]
    for n in notes[:16]:
        click.echo(f"import note (rank {n['rank']}): {n['note']}")
    if len(notes) > 16:
        click.echo(f"  ... {len(notes) - 16} more import notes; all in --json")
    seg = info["segments"]
    click.echo(f"storage: {seg['files']} segment files, {seg['bytes'] / 1e6:.2f} MB")


def _span(values: list[int]) -> str:
    return f"[{values[0]}..{values[-1]}]" if values else ""


@click.command("compact")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
def compact_command(run: str) -> None:
    """Merge each stream's sealed segments into Parquet (safe on a live run)."""
    parts = compact(run)
    click.echo(f"compacted {len(parts)} streams in {run}")
