"""Capture schedule: which steps of a long run keep their full spans (issue 10, item 3).

Per-step results (:mod:`profiler.steps`) are kept for every step; full spans only for capture
windows, like torch.profiler's ``schedule(skip_first, wait, active, repeat)``: from step
``first`` on, ``steps`` consecutive steps out of every ``every`` (``--trace-every N
--trace-steps K``: steps ``first + i*N .. first + i*N + K - 1``). ``repeat`` (0: forever)
bounds the number of windows. The run records its schedule in the manifest
(``extra["capture"]``), so every reader can say which steps have full spans.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError

__all__ = ["CaptureSchedule", "MANIFEST_KEY"]

#: where the schedule lives in the manifest: ``manifest.extra["capture"]``
MANIFEST_KEY = "capture"


@dataclass(frozen=True)
class CaptureSchedule:
    """``steps`` steps with full spans in every ``every``, from step ``first``; ``repeat``
    windows at most (0: no limit)."""

    every: int
    steps: int = 1
    first: int = 0
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InputError(f"--trace-every {self.every} must be at least 1 (1: every step "
                             "keeps its spans)")
        if not 1 <= self.steps <= self.every:
            raise InputError(f"--trace-steps {self.steps} must be between 1 and --trace-every "
                             f"{self.every}")
        if self.first < 0 or self.repeat < 0:
            raise InputError(f"--trace-first {self.first} and --trace-repeat {self.repeat} "
                             "must be 0 or more")

    def captures(self, step: int) -> bool:
        """Whether ``step`` keeps its full spans. Steps before ``first`` do not; a step of
        unknown number (-1, the whole run is one step) does."""
        if step < 0:
            return True
        if step < self.first:
            return False
        window, pos = divmod(step - self.first, self.every)
        return pos < self.steps and (self.repeat == 0 or window < self.repeat)

    def describe(self) -> str:
        """In words, e.g. ``"full spans for 2 of every 10 steps from step 0"``."""
        if self.every == self.steps and not self.repeat:
            return f"full spans for every step from step {self.first}"
        text = f"full spans for {self.steps} of every {self.every} steps from step {self.first}"
        return text + (f", {self.repeat} windows" if self.repeat else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "describe": self.describe()}

    @classmethod
    def from_manifest(cls, manifest: Any) -> CaptureSchedule | None:
        """The schedule recorded in a manifest, or None (every step has its spans)."""
        raw = (getattr(manifest, "extra", None) or {}).get(MANIFEST_KEY)
        if not isinstance(raw, dict):
            return None
        try:
            return cls(every=int(raw["every"]), steps=int(raw.get("steps", 1)),
                       first=int(raw.get("first", 0)), repeat=int(raw.get("repeat", 0)))
        except (KeyError, TypeError, ValueError, InputError):
            return None
