"""Capture windows on a live run: delete span segments of finished steps outside the capture
schedule (issue 10, item 3), once their step results are committed.

Only *sealed* segments are deleted, and only those wholly behind the engine's resume position
(every row read, its step finished and persisted) whose every row belongs to a step the
schedule does not capture; a segment holding any captured step (or a row of unknown step) is
kept whole, so a window may keep a few neighbouring steps too. A reader whose cursor was in a
deleted segment moves on to the next one (:mod:`profiler.store.cursor`: a missing segment
number is skipped).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..capture import CaptureSchedule
from ..errors import RunFormatError
from ..store.integrity import crc_path, read_segment
from ..store.segments import SEG_RE
from .buffer import table_steps
from .engine import StepEngine

__all__ = ["prune_spans"]


def prune_spans(engine: StepEngine, capture: CaptureSchedule,
                examined: dict[str, int] | None = None) -> list[Path]:
    """Delete the sealed span segments the schedule does not keep (module doc); returns them.
    ``examined``: stream -> first segment number not looked at yet (kept between calls, so
    each segment is read once)."""
    examined = {} if examined is None else examined
    resume = engine.resume_cursor()
    deleted: list[Path] = []
    for stream in engine.reader.streams("spans"):
        rank = int(stream.rsplit("-", 1)[1])
        done = engine.finished_step(rank)
        before = resume.pos(stream).seq
        directory = engine.path / stream
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        sealed = sorted(int(m.group(1)) for n in names if (m := SEG_RE.match(n)) and not m.group(2))
        for seq in sealed:
            if seq < examined.get(stream, 0) or seq >= before:
                continue
            path = directory / f"seg-{seq:06d}.arrows"
            try:
                got = read_segment(path, sealed=True, policy="error")
            except (OSError, RunFormatError):
                examined[stream] = seq + 1
                continue  # damaged or gone: never delete what cannot be checked
            examined[stream] = seq + 1
            if got.table is None or not got.complete:
                continue
            steps = table_steps(got.table)
            if len(steps) and (steps <= done).all() and (steps >= 0).all() and not any(
                    capture.captures(int(s)) for s in set(steps.tolist())):
                path.unlink()
                crc_path(path).unlink(missing_ok=True)
                deleted.append(path)
    return deleted
