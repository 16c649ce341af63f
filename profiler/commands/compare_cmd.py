"""``dualscope compare RUN``: measured vs ideal timeline of the run's pipeline schedule."""

from __future__ import annotations

import click

from ..compare import compare
from ..report import print_json, print_table
from ..store import RunReader

__all__ = ["command"]


@click.command("compare")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--schedule", default="auto", show_default=True,
              help="auto (manifest, else inferred from the ops), measured (the run's own op "
                   "order), 1f1b, zb1p, dualpipe or dualpipev.")
@click.option("--per-step", is_flag=True, help="Print every (step, rank) row, not the means.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(run: str, schedule: str, per_step: bool, as_json: bool) -> None:
    """Fit per-stage F/B/W/F&B costs from the measured actions, simulate the ideal timeline,
    and split each rank's excess bubble into slow stages, exposed communication (link
    latency), host gaps and P2P wait (parts >= 0 that sum to the excess); report how well a
    replay of the run's own order, work, host gaps and link latencies reproduces each step."""
    reader = RunReader(run)
    result = compare(reader.spans(), reader.manifest, schedule=schedule)
    if as_json:
        print_json({"summary": result.summary(), "per_rank": result.per_rank,
                    "per_step": result.per_step, "costs": result.costs})
        return
    s = result.summary()
    click.echo(f"schedule {s['schedule']}: {s['pp']} pipeline ranks, {s['stages']} stages, "
               f"{s['microbatches']} micro-batches, {s['steps']} steps")
    for note in s["notes"]:
        click.echo(f"note: {note}")
    for warning in s["warnings"]:
        click.echo(f"warning: {warning}")
    ms = 1e6
    costs = [{"stage": r.stage, "F ms": r.f_ns / ms, "B ms": r.b_ns / ms, "W ms": r.w_ns / ms,
              "F&B ms": r.fb_ns / ms, "samples F/B/I/W/FB": f"{r.n_f}/{r.n_b}/{r.n_i}/{r.n_w}/{r.n_fb}"}
             for r in result.costs.itertuples()]
    print_table("fitted costs (medians)", costs)
    pr = result.per_rank
    cols = ["measured_bubble_ns", "ideal_bubble_ns", "excess_ns", "slow_stage_ns",
            "exposed_comm_ns", "host_gap_ns", "p2p_wait_ns", "below_ideal_ns"]
    table = pr if per_step else pr.groupby(["pipeline", "rank", "pp_rank"], as_index=False)[
        [*cols, "measured_bubble_ratio", "ideal_bubble_ratio"]].mean()
    rows = [{**({"step": r["step"]} if per_step else {}), "rank": r["rank"],
             "pp_rank": r["pp_rank"], "bubble ms": r["measured_bubble_ns"] / ms,
             "ideal ms": r["ideal_bubble_ns"] / ms, "excess ms": r["excess_ns"] / ms,
             "slow stage ms": r["slow_stage_ns"] / ms, "exposed comm ms": r["exposed_comm_ns"] / ms,
             "host gap ms": r["host_gap_ns"] / ms, "p2p wait ms": r["p2p_wait_ns"] / ms,
             "below ideal ms": r["below_ideal_ns"] / ms,
             "bubble %": 100 * r["measured_bubble_ratio"],
             "ideal %": 100 * r["ideal_bubble_ratio"]}
            for _, r in table.iterrows()]
    print_table("bubbles per rank" + ("" if per_step else " (mean over steps)"), rows)
    steps = [{"step": r.step, "pipeline": r.pipeline, "measured ms": r.measured_ns / ms,
              "ideal ms": r.ideal_ns / ms, "replay ms": r.replay_ns / ms,
              "replay error %": 100 * r.replay_error,
              "own transfers error %": 100 * r.transfer_replay_error,
              "p2p latency ms": r.p2p_latency_ns / ms}
             for r in result.per_step.itertuples()]
    print_table("steps: measured vs ideal vs replay", steps)
    if s["replay_error_abs_median"] is not None:
        click.echo(f"replay error |median| {100 * s['replay_error_abs_median']:.2f} %, "
                   f"|max| {100 * s['replay_error_abs_max']:.2f} % (each link's median "
                   "latency); with each transfer's own measured delay |median| "
                   f"{100 * s['transfer_replay_error_abs_median']:.2f} %, "
                   f"|max| {100 * s['transfer_replay_error_abs_max']:.2f} %")
