"""Capture windows (issue 10, item 3): on a live run, delete span segments of finished steps
outside the capture schedule once their step results are committed (:func:`prune_spans`); on a
finished run (an import), keep full spans for exactly the captured steps (:func:`keep_capture`).

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

import numpy as np
import pyarrow as pa

from ..capture import MANIFEST_KEY, CaptureSchedule
from ..errors import RunFormatError
from ..manifest import Manifest
from ..store import RunReader, compact
from ..store.integrity import crc_path, read_segment
from ..store.segments import SEG_RE
from .buffer import table_steps
from .engine import StepEngine

__all__ = ["prune_spans", "keep_capture"]


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


def keep_capture(run_dir: str | os.PathLike[str], capture: CaptureSchedule, *,
                 ideal_every: int = 1) -> dict[str, int]:
    """A finished run (an import) after the fact: compute every step's results, record the
    schedule in the manifest (``extra["capture"]``), then keep full spans only for the
    captured steps (a compaction that filters rows, exact to the step; rows of unknown step
    are kept). Offline only (see :func:`~profiler.store.compact`). Returns ``{"steps": ...,
    "rows_before": ..., "rows_after": ...}``."""
    run = Path(run_dir)
    m = Manifest.read(run)
    m.extra[MANIFEST_KEY] = capture.to_dict()
    m.write(run)
    with StepEngine(run, ideal_every=ideal_every) as engine:
        new = engine.update(final=True)
        steps = len(new.get("steps", ()))
    reader = RunReader(run)
    before = reader.span_table(columns=["step"]).num_rows

    def captured(table: pa.Table) -> np.ndarray:
        stp = table_steps(table)
        return np.array([capture.captures(int(s)) for s in stp]) if len(stp) else \
            np.zeros(0, bool)

    compact(run, kinds=("spans",), keep=captured)
    after = RunReader(run).span_table(columns=["step"]).num_rows
    return {"steps": steps, "rows_before": before, "rows_after": after}
