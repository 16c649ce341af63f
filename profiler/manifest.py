"""``RUN/manifest.json``: what a run is (source, topology, parallel config, probe status,
clock offsets). Written atomically (temporary file, fsync, rename) so a reader never sees a
half-written manifest.

The dataclasses below are the one schema. Reading validates against their annotations with
``msgspec`` (chosen over pydantic: it validates plain dataclasses as they are, is strict — a
``"2"`` is not an int — and names the offending field: ``Expected `int | null`, got `str` - at
`$.topology.nodes```); unknown keys are ignored so that newer writers' additions do not break
older readers, and a ``schema_version`` newer than this code is refused by name."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .errors import RunFormatError
from .fsutil import NotRegularFile, read_regular
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
    def from_dict(cls, d: object) -> Manifest:
        """Validate a decoded manifest (``ValueError`` naming the field on any mismatch)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {_json_type(d)}")
        # null where an object is expected reads as "not recorded", as older writers left it
        d = {k: v for k, v in d.items() if not (v is None and k in _OPTIONAL_OBJECTS)}
        try:
            return msgspec.convert(d, cls, str_keys=True)
        except msgspec.ValidationError as e:
            raise ValueError(str(e)) from None

    def write(self, run_dir: str | os.PathLike[str]) -> None:
        write_json_atomic(Path(run_dir) / "manifest.json", self.to_dict())

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> Manifest:
        """Read and validate ``RUN/manifest.json``; :class:`RunFormatError` with one line
        naming the file, the field and what was expected on any problem."""
        path = Path(run_dir) / "manifest.json"
        try:
            raw = read_regular(path)  # a FIFO there must not hang every reader of the run
        except FileNotFoundError:
            raise RunFormatError(
                f"{run_dir}: not a dualscope run (no manifest.json); "
                "create one with 'dualscope import' or 'dualscope run-reference'"
            ) from None
        except NotRegularFile as e:
            raise RunFormatError(f"{path}: {e}; the manifest is damaged: restore it or "
                                 "re-create the run") from None
        except OSError as e:
            raise RunFormatError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RunFormatError(f"{path}: not UTF-8 text (byte {e.start}); the manifest is "
                                 "damaged: restore it or re-create the run") from None
        except json.JSONDecodeError as e:
            raise RunFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        except RecursionError:
            raise RunFormatError(f"{path}: JSON nested too deeply; the manifest is damaged: "
                                 "restore it or re-create the run") from None
        version = d.get("schema_version") if isinstance(d, dict) else None
        if not isinstance(d, dict):
            raise RunFormatError(f"{path}: expected a JSON object, got {_json_type(d)}; the "
                                 "manifest is damaged: restore it or re-create the run")
        if not isinstance(version, int) or isinstance(version, bool):
            raise RunFormatError(f"{path}: schema_version missing or not an integer")
        if version > SCHEMA_VERSION or version < 1:
            raise RunFormatError(
                f"{path}: schema_version {version} is not one this dualscope reads "
                f"(1..{SCHEMA_VERSION}); upgrade dualscope or re-create the run"
            )
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise RunFormatError(f"{path}: {e}; fix that field or re-create the run") from None


#: manifest keys holding objects that may be null in older runs (read as the default)
_OPTIONAL_OBJECTS = frozenset({"topology", "parallel", "probes", "clock_offsets_ns", "extra"})


def _json_type(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` through a temporary file beside it, removed on any failure
    (a full disk, a signal): ``path`` is either the old or the new document, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only file system refuses even this
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
