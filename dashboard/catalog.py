"""The runs under RUNS_DIR, and the only way a run id from the browser becomes a path.

A run id is the run directory's path relative to RUNS_DIR (``synthetic-dsv3`` or
``group/run-1``, at most two levels). :meth:`RunCatalog.resolve` accepts an id only when it is
made of plain name characters, has no ``.``/``..`` part and names a run the catalog found by
listing RUNS_DIR itself, so nothing the browser sends can reach a path outside RUNS_DIR.
Entries that are symbolic links placed in RUNS_DIR by its owner (``dualscope demo`` links the
bundled samples) are followed; a link inside a run is never looked at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import InputError, RunFormatError
from profiler.manifest import Manifest

__all__ = ["RunCatalog", "RunEntry", "RunNotFound", "STALE_AFTER_S", "public_text"]

_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
#: a run whose manifest says ``live`` but whose files have not changed for this long
STALE_AFTER_S = 120.0


class RunNotFound(InputError):
    """A run id that is not a run under RUNS_DIR (or tries to leave it)."""


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    path: Path
    manifest: Manifest | None
    #: ``live``, ``stale`` (live, no write for a while), ``finished``, ``failed``, ``corrupt``
    status: str
    size_bytes: int
    modified_unix_s: float
    error: str | None = None

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest and self.manifest.synthetic)

    @property
    def source(self) -> str:
        return self.manifest.source if self.manifest else "?"


def _is_run_candidate(path: Path) -> bool:
    try:
        return (path / "manifest.json").exists() or (path / "spans").is_dir()
    except OSError:  # unreadable, a symlink loop: not a run
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _listdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:  # a folder we may not read is skipped, not an error of the page
        return []


_ABS_RE = re.compile(r"(?<![\w.~-])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+)")


def public_text(text: str, root: Path, entries: Iterable[RunEntry] = ()) -> str:
    """``text`` without the server's absolute paths: a run's directory (as listed, or where
    its link points) becomes its run id, RUNS_DIR becomes ``RUNS_DIR``, and any other absolute
    path keeps only its last part (``…/name``)."""
    pairs: list[tuple[str, str]] = []
    for e in entries:
        pairs.append((str(e.path), e.run_id))
        with contextlib.suppress(OSError):
            pairs.append((str(e.path.resolve()), e.run_id))
    pairs.append((str(root), "RUNS_DIR"))
    with contextlib.suppress(OSError):
        pairs.append((str(root.resolve()), "RUNS_DIR"))
    for path, name in sorted(set(pairs), key=lambda p: -len(p[0])):
        if path not in ("", "/"):
            text = text.replace(path, name)
    return _ABS_RE.sub(r"…/\1", text)


class RunCatalog:
    """Lists RUNS_DIR (cached for ``ttl_s``) and resolves run ids safely."""

    def __init__(self, runs_dir: str | os.PathLike[str], *, ttl_s: float = 2.0) -> None:
        self.root = Path(runs_dir).absolute()
        if not self.root.is_dir():
            raise InputError(f"{runs_dir}: runs directory does not exist; create it or pass "
                             "the folder that holds your run directories")
        self.ttl_s = ttl_s
        self._entries: dict[str, RunEntry] = {}
        self._listed_at = -1e18

    # -- listing -------------------------------------------------------------------------
    def entries(self, *, refresh: bool = False) -> list[RunEntry]:
        now = time.monotonic()
        if refresh or now - self._listed_at > self.ttl_s:
            self._entries = {e.run_id: e for e in self._scan()}
            self._listed_at = now
        return sorted(self._entries.values(), key=_sort_key)

    def _scan(self) -> list[RunEntry]:
        found: list[RunEntry] = []
        for child in _listdir(self.root):
            if child.name.startswith(".") or not _is_dir(child):
                continue
            if _is_run_candidate(child):
                found.append(_entry(child.name, child, self.root))
                continue
            for sub in _listdir(child):
                if not sub.name.startswith(".") and _is_dir(sub) and _is_run_candidate(sub):
                    found.append(_entry(f"{child.name}/{sub.name}", sub, self.root))
        return [e for e in found if _ID_RE.match(e.run_id)]

    def public(self, text: str) -> str:
        """``text`` (an error message) with the server's paths replaced by run ids and paths
        inside runs (:func:`public_text`): what the browser may see."""
        return public_text(text, self.root, self._entries.values())

    # -- resolving -----------------------------------------------------------------------
    def resolve(self, run_id: object) -> RunEntry:
        """The entry of ``run_id``; raises :class:`RunNotFound` for anything else."""
        if not isinstance(run_id, str) or not _ID_RE.match(run_id) or any(
                part in (".", "..") for part in run_id.split("/")):
            raise RunNotFound(f"run id {str(run_id)[:80]!r} is not a run name; pick a run from "
                              "the Runs page")
        if run_id not in self._entries:
            self.entries(refresh=True)
        entry = self._entries.get(run_id)
        if entry is None:
            raise RunNotFound(f"no run {run_id!r} in this dashboard's runs folder; pick one "
                              "from the Runs page")
        return entry


def _sort_key(e: RunEntry) -> tuple[int, str]:
    order = {"live": 0, "stale": 1, "finished": 2, "failed": 3, "corrupt": 4}
    return (order.get(e.status, 5), e.run_id)


def _dir_stats(path: Path) -> tuple[int, float]:
    size, newest = 0, 0.0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest


def _entry(run_id: str, path: Path, root: Path) -> RunEntry:
    size, newest = _dir_stats(path)
    try:
        manifest = Manifest.read(path)
    except (RunFormatError, OSError, json.JSONDecodeError, ValueError) as e:
        probe = RunEntry(run_id, path, None, "corrupt", size, newest)
        return RunEntry(run_id, path, None, "corrupt", size, newest,
                        error=public_text(str(e), root, [probe]))
    status = manifest.status
    if status == "live" and time.time() - newest > STALE_AFTER_S:
        status = "stale"
    if status not in ("live", "stale", "finished", "failed"):
        status = "finished"
    return RunEntry(run_id, path, manifest, status, size, newest)
