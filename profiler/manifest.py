"""``RUN/manifest.json``: what a run is (source, topology, parallel config, probe status,
clock offsets). Written atomically (temporary file, fsync, rename) so a reader never sees a
half-written manifest."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import RunFormatError
from .schema import SCHEMA_VERSION

__all__ = ["Manifest", "Topology", "Parallel", "ProbeStatus", "write_json_atomic", "fsync_dir"]

SOURCES = ("reference", "import", "probe", "synthetic", "model")


@dataclass
class Topology:
    nodes: int | None = None
    gpus_per_node: int | None = None
    sms_per_gpu: int | None = None
    gpu_name: str | None = None
    #: one direction, bytes per second, per GPU (all links together)
    nvlink_peak_bytes_per_s: float | None = None
    #: one direction, bytes per second, per HCA port
    ib_peak_bytes_per_s: float | None = None


@dataclass
class Parallel:
    world_size: int | None = None
    pp: int | None = None
    ep: int | None = None
    dp: int | None = None
    schedule: str | None = None
    microbatches: int | None = None


@dataclass
class ProbeStatus:
    available: bool
    reason: str = ""


@dataclass
class Manifest:
    source: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    schema_version: int = SCHEMA_VERSION
    created_unix_ns: int = field(default_factory=time.time_ns)
    #: ``live`` while a writer is attached, ``finished`` once it closed cleanly.
    status: str = "live"
    synthetic: bool = False
    description: str = ""
    topology: Topology = field(default_factory=Topology)
    parallel: Parallel = field(default_factory=Parallel)
    probes: dict[str, ProbeStatus] = field(default_factory=dict)
    #: ns to add to a rank's recorded times to put them on the run clock; already applied
    #: to stored spans when ``clock_offsets_applied`` is true.
    clock_offsets_ns: dict[int, int] = field(default_factory=dict)
    clock_offsets_applied: bool = True
    #: free-form, JSON-serialisable facts of the source (importer options, files, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"manifest source {self.source!r} is not one of {SOURCES}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clock_offsets_ns"] = {str(k): int(v) for k, v in self.clock_offsets_ns.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["topology"] = Topology(**_known(Topology, d.get("topology") or {}))
        kw["parallel"] = Parallel(**_known(Parallel, d.get("parallel") or {}))
        kw["probes"] = {
            k: ProbeStatus(**_known(ProbeStatus, v)) for k, v in (d.get("probes") or {}).items()
        }
        kw["clock_offsets_ns"] = {int(k): int(v) for k, v in (d.get("clock_offsets_ns") or {}).items()}
        return cls(**kw)

    def write(self, run_dir: str | os.PathLike[str]) -> None:
        write_json_atomic(Path(run_dir) / "manifest.json", self.to_dict())

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> Manifest:
        path = Path(run_dir) / "manifest.json"
        try:
            raw = path.read_text()
        except FileNotFoundError:
            raise RunFormatError(
                f"{run_dir}: not a dualscope run (no manifest.json); "
                "create one with 'dualscope import' or 'dualscope run-reference'"
            ) from None
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RunFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise RunFormatError(f"{path}: schema_version missing or not an integer")
        if version > SCHEMA_VERSION:
            raise RunFormatError(
                f"{path}: schema_version {version} is newer than this dualscope reads "
                f"({SCHEMA_VERSION}); upgrade dualscope"
            )
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise RunFormatError(f"{path}: {e}") from None


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
