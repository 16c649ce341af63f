"""Published closed-form pipeline bubbles (DualPipe README; DeepSeek-V3 report, table 2).

All take per-chunk costs in any one time unit and return the bubble in that unit:

=========  ============================  ==========================================
schedule   bubble                        PP in the formula
=========  ============================  ==========================================
1F1B       (PP-1)(F+B)                   pipeline ranks
ZB1P       (PP-1)(F+B-2W)                pipeline ranks
DualPipe   (PP/2-1)(F&B+B-3W)            pipeline ranks
DualPipeV  (PP/2-1)(F&B+B-3W)            stages = 2 x ranks, i.e. (ranks-1)(F&B+B-3W)
=========  ============================  ==========================================

The README writes DualPipeV's row for PP stages on PP/2 devices; ``pp`` here is always the
number of pipeline *ranks*, so DualPipeV's bubble is (pp-1)(F&B+B-3W).

How the formulas relate to the simulated ideal timeline (:mod:`profiler.simulate`, zero P2P
latency; checked in tests/test_simulate.py):

* 1F1B: exact for any costs.
* ZB1P: a lower bound; equal for e.g. F, B, W = 1, 2, 1 and 1, 2, 0.5.
* DualPipe / DualPipeV: equal in the paper's regime, B - W = F with W <= F (tested with
  F, B, W, F&B = 1, 2, 1, 3 / 1, 2, 1, 2 / 1, 1.5, 0.5, 2.2 / 2, 3, 1, 4), and a lower bound
  whenever B - W <= F. When the input-grad pass is longer than a forward (B - W > F, e.g.
  1, 2, 0.5, 2.5) the formula *overstates* the bubble by up to F: at PP 4 the simulated
  DualPipe bubble is F&B + F - 2W where the formula has F&B + (B - W) - 2W. Always:
  simulated >= (H-1)(F&B + min(F, B-W) - 2W), H = PP/2 (DualPipe) or PP (DualPipeV ranks).

An independent simulator that follows deepseek-ai/DualPipe's ``dualpipe.py`` step by step
(exact fractions; P = 4, 8, 16) reproduced every per-rank bubble of this model and fitted the
largest DualPipe bubble, k = PP/2 - 1 and I = B - W, as

    k(F + F&B - B) + max(0, k·I - (k+1)·F) + max(0, (2k+1)·I + W - (k+1)·B)

which equals the published formula only when F + 3W = 2B and the two max terms vanish. With
W > F the formula understates badly (1, 2, 1.5, 3 at PP 8: simulated 6, formula 1.5), which is
why ``dualscope model`` prints both figures.
"""

from __future__ import annotations

__all__ = ["FORMULAS", "bubble_formula"]

#: schedule -> the formula as text, for reports
FORMULAS: dict[str, str] = {
    "1f1b": "(PP-1)(F+B)",
    "zb1p": "(PP-1)(F+B-2W)",
    "dualpipe": "(PP/2-1)(F&B+B-3W)",
    "dualpipev": "(PP/2-1)(F&B+B-3W), PP = 2 x ranks",
}


def bubble_formula(schedule: str, pp: int, *, f: float, b: float, w: float, fb: float) -> float | None:
    """The published bubble of ``schedule`` on ``pp`` pipeline ranks, in the unit of the
    costs; ``None`` for a schedule without one (e.g. one taken from torch)."""
    name = schedule.lower()
    if name == "1f1b":
        return (pp - 1) * (f + b)
    if name == "zb1p":
        return (pp - 1) * (f + b - 2 * w)
    if name == "dualpipe":
        return (pp / 2 - 1) * (fb + b - 3 * w)
    if name == "dualpipev":
        return (pp - 1) * (fb + b - 3 * w)
    return None
