"""``dualscope export RUN --format perfetto --out FILE``: a run as Chrome trace JSON.

The run is read one rank (and one node) at a time and streamed to the file, so memory stays
at about one rank's spans however many ranks the run has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import InputError
from ..exporters import perfetto
from ..store import RunReader

__all__ = ["command", "parse_ranks", "parse_window", "format_ranks"]


def parse_ranks(value: str) -> list[int]:
    """``"0,1,4-7"`` -> ``[0, 1, 4, 5, 6, 7]`` (sorted, unique)."""
    ranks: set[int] = set()
    for token in value.split(","):
        tok = token.strip()
        lo, sep, hi = tok.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(
                f"--ranks {value!r}: {tok!r} is not a rank or a range A-B; "
                "use non-negative integers such as 0,1,4-7"
            ) from None
        if a < 0 or b < a:
            raise InputError(
                f"--ranks {value!r}: {tok!r} is not a valid range; write A-B with 0 <= A <= B"
            )
        ranks.update(range(a, b + 1))
    return sorted(ranks)


def parse_window(value: str) -> tuple[int | None, int | None]:
    """``"START_NS:END_NS"`` (either side may be empty) -> ``(start, end)``; half-open."""
    lo, sep, hi = value.partition(":")
    if not sep or ":" in hi:
        raise InputError(f"--window {value!r}: expected START_NS:END_NS, e.g. 1000000:5000000")
    try:
        start = int(lo) if lo.strip() else None
        end = int(hi) if hi.strip() else None
    except ValueError:
        raise InputError(
            f"--window {value!r}: START_NS and END_NS must be integers (ns on the run clock)"
        ) from None
    if start is None and end is None:
        raise InputError(f"--window {value!r}: give at least START_NS or END_NS")
    if start is not None and end is not None and end <= start:
        raise InputError(f"--window {value!r}: END_NS ({end}) must be after START_NS ({start})")
    return start, end


def format_ranks(ranks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    rs = sorted(ranks)
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out) or "none"


def _select_ranks(run_ranks: list[int], ranks_opt: str | None) -> list[int]:
    if ranks_opt is None:
        return run_ranks
    wanted = parse_ranks(ranks_opt)
    missing = sorted(set(wanted) - set(run_ranks))
    if missing:
        raise InputError(
            f"--ranks {ranks_opt!r}: rank(s) {format_ranks(missing)} not in the run "
            f"(it has {format_ranks(run_ranks)})"
        )
    return wanted


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["perfetto"]), default="perfetto",
              show_default=True, help="Output format: Chrome trace JSON for ui.perfetto.dev.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output file (must not exist unless --force).")
@click.option("--ranks", "ranks_opt", default=None, metavar="LIST",
              help="Ranks to export, e.g. 0,1,4-7 (default: all).")
@click.option("--window", "window_opt", default=None, metavar="START_NS:END_NS",
              help="Only spans overlapping [START_NS, END_NS) and counters inside it; "
                   "ns on the run clock, either side may be empty.")
@click.option("--gzip", "gz", is_flag=True, help="gzip-compress the output (Perfetto opens it).")
@click.option("--counters/--no-counters", default=True, show_default=True,
              help="Include node counters (NVLink, IB, SM ...) as counter tracks.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def command(run: Path, fmt: str, out: Path, ranks_opt: str | None, window_opt: str | None,
            gz: bool, counters: bool, force: bool) -> None:
    """Export RUN as a Chrome trace JSON that ui.perfetto.dev opens: one process per rank,
    one track per lane and stream, counters per node."""
    t0 = time.perf_counter()
    start_ns, end_ns = parse_window(window_opt) if window_opt is not None else (None, None)
    perfetto.check_trace_out(out, force=force)  # fail before reading a large run
    reader = RunReader(run)
    ranks = _select_ranks(reader.ranks(), ranks_opt)
    nodes = reader.nodes() if counters else []

    # pass 1: the earliest time, so that ts = (ns - base) / 1000 keeps ns precision
    lows: list[int] = []
    for r in ranks:
        t = RunReader(run).span_table([r], start_ns, end_ns, columns=["start_ns"])
        if t.num_rows:
            lows.append(int(t.column("start_ns").to_numpy().min()))
    for node in nodes:
        t = RunReader(run).counter_table([node], start_ns, end_ns, columns=["ts_ns"])
        if t.num_rows:
            lows.append(int(t.column("ts_ns").to_numpy().min()))
    base = (min(lows) // 1_000_000_000) * 1_000_000_000 if lows else 0

    stats = {"spans": 0, "counter_samples": 0}

    def events() -> Iterator[dict[str, Any]]:
        # a fresh reader per stream: RunReader caches every segment it read
        for r in ranks:
            spans = RunReader(run).spans([r], start_ns, end_ns)
            stats["spans"] += len(spans)
            yield from perfetto.span_events(spans, ts_base_ns=base)
        for i, node in enumerate(nodes):
            ctr = RunReader(run).counters([node], start_ns, end_ns)
            stats["counter_samples"] += int(ctr["value"].notna().sum())
            yield from perfetto.counter_events(ctr, ts_base_ns=base,
                                               pid=perfetto.NODE_PID_BASE + i)

    other = perfetto.other_data(
        reader.manifest, base, ranks=format_ranks(ranks),
        window_ns=[start_ns, end_ns] if window_opt is not None else None,
    )
    n = perfetto.write_chrome_trace(out, events(), other=other, gzip=gz, force=force)
    size_mb = out.stat().st_size / 1e6
    click.echo(
        f"wrote {out} ({size_mb:.1f} MB, {fmt}{', gzip' if gz else ''}): {stats['spans']} spans "
        f"of {len(ranks)} rank(s), {stats['counter_samples']} counter samples of "
        f"{len(nodes)} node(s), {n} events in {time.perf_counter() - t0:.2f} s"
    )
