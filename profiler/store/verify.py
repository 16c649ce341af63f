"""``dualscope verify RUN``: check a whole run — the manifest, every segment against its
checksums and Arrow's full validation, every Parquet part — and list what is damaged."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFormatError, io_error
from ..fsutil import not_regular
from ..manifest import Manifest
from ..schema import COUNTER_SCHEMA, SPAN_SCHEMA
from .integrity import (
    CRC_SUFFIX,
    crc_path,
    read_segment,
    verify_file_checksum,
    write_file_checksum,
    write_segment_checksum,
)
from .segments import OPEN, PART_RE, SEG_RE
from .writer import removed_on_error

__all__ = ["Finding", "verify_run", "add_missing_checksums"]


@dataclass(frozen=True)
class Finding:
    """One file's verdict: ``ok``, ``unchecked`` (readable, but written before checksums),
    ``damaged`` (with the reason) or ``stray`` (a file the store does not know)."""

    path: str
    status: str
    detail: str = ""
    rows: int = 0


def _rel(run: Path, path: Path) -> str:
    try:
        return str(path.relative_to(run))
    except ValueError:
        return str(path)


def _check_columns(table: pa.Table, kind: str) -> str:
    if kind == "derived":  # each derived table has its own columns (docs/trace-format.md)
        return ""
    expected = SPAN_SCHEMA if kind == "spans" else COUNTER_SCHEMA
    extra = set(table.schema.names) - set(expected.names)
    return f"columns {sorted(extra)[:4]} do not belong to a {kind} stream" if extra else ""


def _segment(run: Path, path: Path, kind: str) -> Finding:
    sealed = not path.name.endswith(OPEN)
    got = read_segment(path, sealed=sealed, policy="skip")
    damage = [n for n in got.notes if n.endswith("(skipped)")]
    if damage:
        return Finding(_rel(run, path), "damaged", "; ".join(d.split(": ", 1)[-1] for d in damage))
    if sealed and not got.complete:
        return Finding(_rel(run, path), "damaged", "sealed segment is truncated")
    rows = 0 if got.table is None else got.table.num_rows
    if got.table is not None:
        wrong = _check_columns(got.table, kind)
        if wrong:
            return Finding(_rel(run, path), "damaged", wrong, rows)
    if got.notes:
        return Finding(_rel(run, path), "unchecked", "no checksums", rows)
    return Finding(_rel(run, path), "ok", "" if sealed else "open (live) segment", rows)


def _part(run: Path, path: Path, kind: str) -> Finding:
    ok, notes = verify_file_checksum(path, "skip")
    if not ok:
        return Finding(_rel(run, path), "damaged",
                       "; ".join(n.split(": ", 1)[-1] for n in notes) or "checksum mismatch")
    try:
        table = pq.read_table(path)
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        return Finding(_rel(run, path), "damaged", f"unreadable Parquet ({type(e).__name__})")
    wrong = _check_columns(table, kind)
    if wrong:
        return Finding(_rel(run, path), "damaged", wrong, table.num_rows)
    return Finding(_rel(run, path), "unchecked" if notes else "ok",
                   "no checksum" if notes else "", table.num_rows)


def verify_run(run_dir: str | os.PathLike[str]) -> list[Finding]:
    """Every file of the run with its verdict (manifest first)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFormatError(f"{run_dir}: no such run directory")
    out: list[Finding] = []
    try:
        Manifest.read(run)
        out.append(Finding("manifest.json", "ok"))
    except RunFormatError as e:
        out.append(Finding("manifest.json", "damaged", str(e).split(": ", 1)[-1]))
    for kind in ("spans", "counters"):
        _streams(run, run / kind, kind, out)
    derived = run / "derived" / "steps"
    _streams(run, derived, "derived", out)
    for path in (derived / "state.json", *sorted((run / "heartbeat").glob("*.json"))):
        if path.exists() or path.is_symlink():
            out.append(_json_file(run, path))
    return out


def _streams(run: Path, root: Path, kind: str, out: list[Finding]) -> None:
    """The verdict of every file of every stream directory under ``root``."""
    if not root.is_dir():
        return
    for stream in sorted(root.iterdir()):
        if kind == "derived" and stream.name in ("state.json", ".lock"):
            continue
        why = not_regular(stream)
        if why != "a directory":
            out.append(Finding(_rel(run, stream), "damaged", f"a stream must be a "
                               f"directory, this is {why or 'a file'}"))
            continue
        for path in sorted(stream.iterdir()):
            name = path.name
            if name.endswith(CRC_SUFFIX) or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if not (SEG_RE.match(name) or PART_RE.match(name)):
                out.append(Finding(_rel(run, path), "stray", "not a file of the store"))
                continue
            why = not_regular(path)
            if why:
                out.append(Finding(_rel(run, path), "damaged", why))
                continue
            try:
                out.append((_segment if SEG_RE.match(name) else _part)(run, path, kind))
            except OSError as e:
                out.append(Finding(_rel(run, path), "damaged", f"cannot read ({e.strerror})"))


def _json_file(run: Path, path: Path) -> Finding:
    """A JSON side file (the step engine's state, a writer's heartbeat): readable JSON object
    or damaged. Both are advisory: a damaged one is rewritten by its writer (the engine then
    reads its results again; a heartbeat is renewed every second)."""
    why = not_regular(path)
    if why:
        return Finding(_rel(run, path), "damaged", why)
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        return Finding(_rel(run, path), "damaged", f"cannot read ({e.strerror})")
    except ValueError:
        return Finding(_rel(run, path), "damaged", "not JSON (advisory: rewritten by its writer)")
    if not isinstance(doc, dict):
        return Finding(_rel(run, path), "damaged", "not a JSON object")
    return Finding(_rel(run, path), "ok")


def add_missing_checksums(run_dir: str | os.PathLike[str], findings: list[Finding]) -> int:
    """Write the sidecar of every sealed file that :func:`verify_run` found ``unchecked``
    (readable and valid, but written before checksums existed); the number written. A
    sidecar that cannot be written (read-only file system, full disk) stops it with one
    :class:`InputError` naming the file; nothing half-written is left."""
    run = Path(run_dir)
    n = 0
    for f in findings:
        if f.status != "unchecked" or f.path.endswith(OPEN):
            continue
        path = run / f.path
        try:
            with removed_on_error(path.parent, crc_path(path).name):
                if PART_RE.match(path.name):
                    write_file_checksum(path)
                else:
                    write_segment_checksum(path)
        except OSError as e:
            raise io_error(path, e, "add a checksum beside", flag=None) from None
        n += 1
    return n
