"""Clock offsets between ranks, estimated at start-up by ping-pong over a gloo group.

Rank 0 is the reference. For each other rank r and each of ``rounds`` exchanges, rank 0
sends at t0 (its clock), r stamps the arrival t1 and the reply t2 (r's clock), rank 0 stamps
the reply's arrival t3. NTP's estimate of r's clock minus rank 0's is
``((t1 - t0) + (t2 - t3)) / 2``, exact when the two one-way delays are equal; the round with
the smallest round-trip ``(t3 - t0) - (t2 - t1)`` is kept (its asymmetry is bounded by that
RTT). The run clock is rank 0's clock, so the offset to *add* to rank r's times is minus that
estimate; rank 0 broadcasts all offsets and every rank applies its own before writing
(``clock_offsets_applied`` in the manifest). Ranks of one host share a clock, so their
offsets only measure how far each process's clock mapping (wall time read once, then
``perf_counter``) is off, a few microseconds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["estimate_offsets"]


def estimate_offsets(local_ns: Any, group: Any = None, rounds: int = 8) -> tuple[dict[int, int],
                                                                                 dict[int, int]]:
    """Return ``(offsets_ns, rtt_ns)``: per rank, the ns to add to its clock to reach rank
    0's, and the round-trip time of the kept round. Collective over ``group`` (default:
    the world); ``local_ns`` is the clock function (``RunClock.local_ns``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    msg = torch.zeros(2, dtype=torch.int64)
    result = torch.zeros(2 * world, dtype=torch.int64)
    if rank == 0:
        for r in range(1, world):
            best: tuple[int, int] | None = None
            for _ in range(rounds):
                t0 = local_ns()
                dist.send(torch.tensor([t0, 0], dtype=torch.int64), dst=r, group=group)
                dist.recv(msg, src=r, group=group)
                t3 = local_ns()
                t1, t2 = int(msg[0]), int(msg[1])
                rtt = (t3 - t0) - (t2 - t1)
                theta = ((t1 - t0) + (t2 - t3)) // 2
                if best is None or rtt < best[1]:
                    best = (theta, rtt)
            assert best is not None
            result[2 * r] = -best[0]
            result[2 * r + 1] = best[1]
    else:
        for _ in range(rounds):
            dist.recv(msg, src=0, group=group)
            t1 = local_ns()
            t2 = local_ns()
            dist.send(torch.tensor([t1, t2], dtype=torch.int64), dst=0, group=group)
    dist.broadcast(result, src=0, group=group)
    vals = result.tolist()
    return ({r: int(vals[2 * r]) for r in range(world)},
            {r: int(vals[2 * r + 1]) for r in range(world)})
