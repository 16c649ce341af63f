"""``dualscope analyze RUN``: bubbles, overlap, SM split, link bandwidth, stragglers and
(optionally) clock alignment, locally or on Dask."""

from __future__ import annotations

import re

import click
import pandas as pd

from ..analysis.overlap import overlap_total
from ..errors import InputError
from ..report import print_json, print_table

__all__ = ["command", "parse_ranks"]

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_ranks(text: str | None) -> list[int] | None:
    """``"0-7,12"`` -> ``[0, 1, ..., 7, 12]``; None -> None (all ranks)."""
    if text is None:
        return None
    out: set[int] = set()
    for part in text.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise InputError(f"--ranks {text!r}: {part.strip()!r} is not a rank or a range; "
                             "write e.g. 0-7,12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"--ranks {text!r}: range {part.strip()} runs backwards; "
                             f"write {hi}-{lo}")
        out.update(range(lo, hi + 1))
    return sorted(out)


@click.command("analyze")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every table).")
@click.option("--ranks", default=None, help="Only these ranks, e.g. 0-7,12 (step windows then "
              "span only the selected ranks).")
@click.option("--align", is_flag=True, help="Estimate per-rank clock offsets from collectives "
              "and send/recv pairs and apply them before analysing.")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local",
              show_default=True, help="Run per-rank work in this process or as Dask tasks.")
@click.option("--scheduler", default=None, help="Address of a running dask.distributed "
              "scheduler (with --engine dask); default: start a LocalCluster.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="LocalCluster worker processes (default: CPU count).")
@click.option("--ranks-per-task", type=click.IntRange(min=1), default=64, show_default=True,
              help="Ranks per task (whole nodes are never split).")
@click.option("--sms-per-gpu", type=click.IntRange(min=1), default=None,
              help="Override topology.sms_per_gpu of the manifest.")
@click.option("--straggler-threshold", type=float, default=3.5, show_default=True,
              help="Robust z-score above which a rank's op counts as straggling.")
@click.option("--peers-by-stage", is_flag=True, help="Compare a rank's op durations only with "
              "ranks running the same stage (when stages differ in cost, e.g. embedding/head).")
@click.option("--sm-series", is_flag=True, help="Also return the SM split time series "
              "(large; JSON only).")
@click.option("--top", type=click.IntRange(min=1), default=12, show_default=True,
              help="Rows of the per-rank tables in the readable output.")
def command(run: str, as_json: bool, ranks: str | None, align: bool, engine: str,
            scheduler: str | None, workers: int | None, ranks_per_task: int,
            sms_per_gpu: int | None, straggler_threshold: float, peers_by_stage: bool,
            sm_series: bool, top: int) -> None:
    """Where the bubbles are, how much communication is exposed, who holds the SMs, how busy
    the links are and which ranks straggle."""
    from ..engine import analyze_run

    if workers is not None and engine != "dask":
        raise InputError("--workers needs --engine dask")
    results = analyze_run(
        run, ranks=parse_ranks(ranks), align=align, engine=engine, scheduler=scheduler,
        workers=workers, ranks_per_task=ranks_per_task, sms_per_gpu=sms_per_gpu,
        straggler_threshold=straggler_threshold, sm_series=sm_series or None,
        straggler_peer_keys=("stage",) if peers_by_stage else None,
    )
    if as_json:
        print_json({"run": run, **results})
        return
    _render(results, top)


def _rows(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


def _render(res: dict[str, pd.DataFrame], top: int) -> None:
    status = res["status"]
    missing = status.loc[~status["available"] | (status["reason"] != "")]
    if len(missing):
        print_table("unavailable or partial", _rows(missing), ["analysis", "rows", "reason"])
    b = res["bubbles"]
    if len(b):
        print_table("bubbles per pipeline position (ns; ratios of the step window)",
                    _rows(res["bubbles_by_stage"]),
                    ["pp_rank", "stages", "ranks", "rank_steps", "window_ns", "bubble_ns_mean",
                     "bubble_ratio_mean", "bubble_ratio_max", "warmup_ns_mean",
                     "steady_ns_mean", "cooldown_ns_mean"])
        per_rank = b.groupby(["rank", "pipeline", "pp_rank"], as_index=False).agg(
            steps=("step", "size"), bubble_ns=("bubble_ns", "mean"),
            bubble_ratio=("bubble_ratio", "mean"), warmup_ns=("warmup_ns", "mean"),
            steady_ns=("steady_ns", "mean"), cooldown_ns=("cooldown_ns", "mean"))
        print_table(f"ranks with the largest bubble ratio (mean over steps; top {top})",
                    _rows(per_rank.nlargest(top, "bubble_ratio")))
    ov = res["overlap"]
    if len(ov):
        tot = ov[["comm_ns", "overlapped_ns", "exposed_comm_ns"]].sum()
        share, why = overlap_total(ov)
        click.echo(f"overlap over {len(ov)} ranks: comm {tot['comm_ns'] / 1e9:.6f} s, "
                   + (f"overlapped {share:.1%}" if not why else f"overlapped n/a ({why})")
                   + f", exposed {tot['exposed_comm_ns'] / 1e9:.6f} s")
        print_table(f"most exposed communication (top {top})",
                    _rows(ov.nlargest(top, "exposed_comm_ns")))
    sm = res.get("sm_seconds")
    if sm is not None and len(sm):
        print_table(f"SM-seconds per GPU, largest communication share (top {top})",
                    _rows(sm.nlargest(top, "comm_share")))
    bw = res.get("link_bandwidth")
    if bw is not None and len(bw):
        from ..counters import device_kinds

        kind = bw.assign(device_kind=device_kinds(bw["device"]))
        agg = kind.groupby(["device_kind", "metric"], as_index=False).agg(
            devices=("device", "size"), mean_bytes_per_s=("mean_bytes_per_s", "mean"),
            p95_bytes_per_s=("p95_bytes_per_s", "mean"), max_bytes_per_s=("max_bytes_per_s", "max"),
            mean_share_of_peak=("mean_share_of_peak", "mean"))
        print_table("link bandwidth (bytes/s; mean over devices of per-device stats)", _rows(agg))
        ph = res.get("bandwidth_phase_summary")
        if ph is not None and len(ph):
            print_table("link bandwidth per communication phase", _rows(ph))
    st = res["stragglers"]
    if len(st):
        print_table("stragglers", _rows(st))
    elif res["op_scores"]["z"].notna().any():
        click.echo("stragglers: none above the threshold")
    else:
        click.echo("stragglers: not scored (no op ran on 3 or more peer ranks)")
    off = res.get("clock_offsets")
    if off is not None and len(off):
        mag = off.assign(abs_ns=off["offset_ns"].abs())
        print_table(f"clock offsets, largest first (ns; top {top})",
                    _rows(mag.nlargest(top, "abs_ns").drop(columns="abs_ns")))
