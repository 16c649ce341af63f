"""Step results while the reference run trains (issue 10, items 2 and 3).

The launcher (``dualscope run-reference``) runs this beside torchrun: about once a
``interval_s`` it ticks the run's :class:`~profiler.steps.StepEngine` (reads what the ranks
flushed since the last tick, computes the steps that became complete, appends them to
``RUN/derived/steps``) and, with a capture schedule, deletes sealed span segments that hold
only finished steps outside the capture windows (:func:`~profiler.steps.prune_spans`).
When torchrun exits it finishes every step. Any error here is reported once and switches the
follower off; it never stops the training.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from profiler.capture import CaptureSchedule
from profiler.errors import DualscopeError
from profiler.steps import EngineLocked, StepEngine, prune_spans

__all__ = ["LiveSteps"]


class LiveSteps:
    """Follows a run the reference ranks are writing (see the module doc)."""

    def __init__(self, run_dir: str | Path, capture: CaptureSchedule | None, *,
                 interval_s: float = 2.0, budget_s: float = 0.5) -> None:
        self.path = Path(run_dir)
        self.capture = capture
        self.interval_s, self.budget_s = interval_s, budget_s
        self.engine: StepEngine | None = None
        self.off = False
        self.pruned = 0
        self._next = 0.0
        self._examined: dict[str, int] = {}

    def _report(self, what: str, err: BaseException) -> None:
        print(f"[dualscope reference] step results {what}: {err}; the training goes on "
              "without them (compute them afterwards with dualscope steps RUN)",
              file=sys.stderr, flush=True)
        self.off = True
        self.close()

    def tick(self, *, final: bool = False) -> None:
        """One engine update (at most every ``interval_s`` unless ``final``)."""
        now = time.monotonic()
        if self.off or (not final and now < self._next):
            return
        self._next = now + self.interval_s
        try:
            if self.engine is None:
                if not (self.path / "manifest.json").exists():
                    return
                self.engine = StepEngine(self.path)
            if final:
                self.engine.update(final=True)
            else:
                self.engine.update(budget_s=self.budget_s)
            if self.capture is not None:
                self.pruned += len(prune_spans(self.engine, self.capture, self._examined))
        except EngineLocked as e:
            self._report("are computed elsewhere", e)
        except (DualscopeError, OSError, ValueError) as e:
            self._report("failed", e)

    def finish(self) -> None:
        """After the training: every remaining step, then release the run."""
        self.tick(final=True)
        self.close()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
