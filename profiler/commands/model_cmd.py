"""``dualscope model``: simulate a pipeline schedule's ideal timeline and compare its bubble
with the published closed form.

Costs are in abstract units; ``--unit-ns`` says how long one unit is when spans are written
(default 1e6 ns, i.e. 1 unit = 1 ms).
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import InputError
from ..manifest import Manifest, Parallel
from ..report import print_json, print_table
from ..schedules import BUILDERS, FORMULAS, Schedule, bubble_formula, build, from_torch
from ..simulate import DEFAULT_UNIT_NS, Costs, SimResult, simulate
from ..store import RunWriter, atomic_run_dir

__all__ = ["command", "model_summary"]

_NAMES = {"1f1b": "1F1B", "zb1p": "ZB1P", "dualpipe": "DualPipe", "dualpipev": "DualPipeV"}
#: relative tolerance when comparing the simulated bubble with the formula
_TOL = 1e-9


def _schedule(name: str, pp: int, microbatches: int, stages_per_rank: int | None) -> Schedule:
    if name.lower().startswith("torch:"):
        return from_torch(name.split(":", 1)[1], pp, microbatches, stages_per_rank)
    if stages_per_rank is not None:
        raise InputError(f"--stages-per-rank applies to torch:<Name> schedules only, got it with "
                         f"--schedule {name}; leave it out")
    return build(name, pp, microbatches)


def model_summary(result: SimResult, *, f: float, b: float, w: float, fb: float) -> dict[str, Any]:
    """Makespan, per-rank busy / bubble and the closed-form bubble side by side (units).

    ``formula_gap`` = max simulated bubble - formula; ``verdict`` is ``matches``,
    ``understates`` (the formula promises less idle time than the schedule has) or
    ``overstates``; ``None`` when the schedule has no published formula.
    """
    s = result.schedule
    formula = bubble_formula(s.name, s.pp, f=f, b=b, w=w, fb=fb)
    gap = None if formula is None else result.max_bubble - formula
    scale = max(1.0, abs(result.makespan))
    verdict = None
    if gap is not None:
        verdict = ("matches" if abs(gap) <= _TOL * scale
                   else "understates" if gap > 0 else "overstates")
    return {
        "schedule": s.name, "pp": s.pp, "microbatches": s.microbatches,
        "num_stages": s.num_stages, "num_ops": s.num_ops,
        "makespan": result.makespan, "max_bubble": result.max_bubble,
        "max_bubble_rank": int(result.bubble.argmax()),
        "bubble_formula": formula, "formula": FORMULAS.get(s.name), "formula_gap": gap,
        "verdict": verdict, "ranks": result.per_rank(),
    }


@click.command("model")
@click.option("--schedule", "schedule_name", default="dualpipe", show_default=True,
              help=f"{', '.join(BUILDERS)}, or torch:<Name> for a torch.distributed.pipelining "
                   "schedule (DualPipeV, ZBVZeroBubble, Interleaved1F1B, ...)")
@click.option("--pp", type=int, required=True, help="Pipeline ranks.")
@click.option("--microbatches", "-m", type=int, required=True, help="Micro-batches per step.")
@click.option("--f", "f", type=float, default=1.0, show_default=True, help="Forward chunk cost.")
@click.option("--b", "b", type=float, default=2.0, show_default=True,
              help="Full backward chunk cost (input-grad + weight-grad).")
@click.option("--w", "w", type=float, default=1.0, show_default=True,
              help="Weight-grad part of --b.")
@click.option("--fb", "fb", type=float, default=3.0, show_default=True,
              help="Cost of one forward and one backward chunk run overlapped (F&B).")
@click.option("--p2p", type=float, default=0.0, show_default=True,
              help="Point-to-point latency between ranks, in cost units.")
@click.option("--jitter", type=float, default=0.0, show_default=True,
              help="Relative std of a per-op random cost factor (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --jitter.")
@click.option("--unit-ns", type=float, default=DEFAULT_UNIT_NS, show_default=True,
              help="Nanoseconds per cost unit in written spans (1e6: 1 unit = 1 ms).")
@click.option("--stages-per-rank", type=int, default=None,
              help="Stages per rank of a torch:<Name> multi-stage schedule (default 2).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Write the ideal timeline as a run directory (must not exist).")
def command(schedule_name: str, pp: int, microbatches: int, f: float, b: float, w: float,
            fb: float, p2p: float, jitter: float, seed: int, unit_ns: float,
            stages_per_rank: int | None, as_json: bool, out: str | None) -> None:
    """Simulate a schedule's ideal per-rank timeline; compare its bubble with the formula."""
    schedule = _schedule(schedule_name, pp, microbatches, stages_per_rank)
    costs = Costs(f=f, b=b, w=w, fb=fb)
    result = simulate(schedule, costs, p2p=p2p, jitter=jitter, seed=seed, unit_ns=unit_ns)
    summary = model_summary(result, f=f, b=b, w=w, fb=fb)
    params = {"f": f, "b": b, "w": w, "fb": fb, "p2p": p2p, "jitter": jitter, "seed": seed,
              "unit_ns": unit_ns}
    if out is not None:
        _write_run(out, result, summary, params)
    if as_json:
        print_json({**summary, "costs": params, "run": out})
        return
    _print_human(summary, params, out)


def _write_run(out: str, result: SimResult, summary: dict[str, Any], params: dict[str, Any]) -> None:
    s = result.schedule
    manifest = Manifest(
        source="model", synthetic=False,
        description=f"ideal {s.name} timeline from the schedule model (dualscope model)",
        parallel=Parallel(world_size=s.pp, pp=s.pp, schedule=s.name, microbatches=s.microbatches),
        extra={"costs": params, "unit": "cost units; unit_ns ns each",
               "makespan": summary["makespan"], "max_bubble": summary["max_bubble"],
               "bubble_formula": summary["bubble_formula"], "num_stages": s.num_stages},
    )
    with atomic_run_dir(out) as tmp, RunWriter(tmp, manifest) as writer:
        writer.write_spans(result.spans)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _print_human(summary: dict[str, Any], params: dict[str, Any], out: str | None) -> None:
    name = summary["schedule"]
    title = _NAMES.get(name, name)
    click.echo(f"{title}: PP {summary['pp']}, {summary['microbatches']} micro-batches, "
               f"{summary['num_stages']} stages, {summary['num_ops']} ops; costs F={_fmt(params['f'])} "
               f"B={_fmt(params['b'])} W={_fmt(params['w'])} F&B={_fmt(params['fb'])}, "
               f"P2P {_fmt(params['p2p'])}, jitter {_fmt(params['jitter'])} "
               f"(1 unit = {_fmt(params['unit_ns'])} ns)")
    print_table("per rank (units)", summary["ranks"].to_dict(orient="records"),
                ["rank", "busy", "bubble", "bubble_ratio"])
    click.echo(f"makespan          {_fmt(summary['makespan'])}")
    click.echo(f"max bubble        {_fmt(summary['max_bubble'])} (rank {summary['max_bubble_rank']})")
    formula = summary["bubble_formula"]
    if formula is None:
        click.echo("formula bubble    - (no published formula for this schedule)")
    else:
        click.echo(f"formula bubble    {_fmt(formula)} = {summary['formula']}")
        gap = summary["formula_gap"]
        if summary["verdict"] == "understates":
            why = ("P2P latency, jitter and the schedule's dependencies add idle time the "
                   "formula leaves out" if params["p2p"] or params["jitter"] else
                   "the schedule's dependencies add idle time the formula leaves out")
            click.echo(f"the formula UNDERSTATES the simulated bubble by {_fmt(gap)} units: {why}")
        elif summary["verdict"] == "overstates":
            click.echo(f"the formula overstates the simulated bubble by {_fmt(-gap)} units "
                       "(it is exact when B - W = F; here the schedule idles less)")
        else:
            click.echo("the formula matches the simulated bubble")
    if out is not None:
        click.echo(f"wrote {out}")
