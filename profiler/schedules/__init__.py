"""Pipeline schedules as per-rank op lists (the ideal timelines' input).

Built-in schedules, written as the papers' phases with closed-form counts: 1F1B, ZB1P,
DualPipe and DualPipeV; any ``torch.distributed.pipelining`` schedule can be taken from its
own action lists (:func:`from_torch`, :func:`from_pipeline_order`). :mod:`profiler.simulate`
turns a :class:`Schedule` and per-chunk costs into a timeline.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InputError
from .dual import dualpipe, dualpipev
from .formulas import FORMULAS, bubble_formula
from .ops import KINDS, Op, Schedule
from .pipeline import one_f_one_b, zb1p
from .torch_actions import TORCH_SCHEDULES, from_pipeline_order, from_torch

__all__ = [
    "BUILDERS",
    "FORMULAS",
    "KINDS",
    "Op",
    "Schedule",
    "TORCH_SCHEDULES",
    "bubble_formula",
    "build",
    "dualpipe",
    "dualpipev",
    "from_pipeline_order",
    "from_torch",
    "one_f_one_b",
    "zb1p",
]

#: schedule name (as the CLI spells it) -> builder(pp, microbatches)
BUILDERS: dict[str, Callable[[int, int], Schedule]] = {
    "1f1b": one_f_one_b,
    "zb1p": zb1p,
    "dualpipe": dualpipe,
    "dualpipev": dualpipev,
}


def build(name: str, pp: int, microbatches: int) -> Schedule:
    """The built-in schedule ``name`` (1f1b, zb1p, dualpipe, dualpipev) on ``pp`` ranks."""
    builder = BUILDERS.get(name.lower())
    if builder is None:
        raise InputError(f"unknown schedule {name!r}; use one of {', '.join(BUILDERS)}")
    return builder(pp, microbatches)
