"""What the importer reads from a Kineto / Chrome trace, as typed ``msgspec`` structs, and the
checks a value passes where it enters.

Every event is decoded into :class:`Event`: only the fields below become Python objects; any
other key is skipped by the decoder without building anything. The event's own fields are
typed strictly (a ``"cat": []`` or a pid that is a list stops the import with the file and
the event index). ``args`` stays raw JSON (skipped, not parsed) until an event that enters the
run needs it; then it must be an object, decoded into :class:`Args`, whose keys are typed
loosely (``Any``) because tools reuse key names with other types, and checked by
:mod:`.columns` where they are used. The trace's top-level keys are decoded by
:func:`read_meta` (``deviceProperties`` a list of objects, ``distributedInfo`` an object,
``baseTimeNanoseconds`` an integer).

Range. Times are stored as int64 nanoseconds since 1970 (the run clock), so ``ts`` and
``dur`` (µs) must be finite and ``ts * 1000`` (plus ``baseTimeNanoseconds``) must fit int64:
:data:`MAX_ABS_US`. Integers that go into int64 / int32 columns are checked against those
types (:func:`int_in`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..errors import InputError

__all__ = ["Args", "Event", "EVENTS", "TraceMeta", "DeviceInfo", "MAX_ABS_US", "INT32",
           "INT64", "dtype_bytes", "int_in", "msg_bytes", "pg_of", "read_meta", "event_error"]

_NULL = msgspec.Raw(b"null")

#: |ts| and |dur| limit in µs: 9.0e15 µs (year 2255) keeps ``ts * 1000`` plus any base of a
#: trace written this century inside int64 ns, with the float64 ``ts`` still exact to 1 µs
MAX_ABS_US = 9.0e15
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)


class Args(msgspec.Struct, gc=False):
    """The ``args`` keys the importer uses (all others are skipped unparsed)."""

    correlation: Any = None
    device: Any = None
    stream: Any = None
    #: raw JSON, decoded for all kernels of a chunk at once (:mod:`.kineto`)
    grid: msgspec.Raw = _NULL
    bytes: Any = None
    pg_name: Any = msgspec.field(default=None, name="Process Group Name")
    pg_desc: Any = msgspec.field(default=None, name="Process Group Description")
    collective: Any = msgspec.field(default=None, name="Collective name")
    dtype: Any = None
    in_nelems: Any = msgspec.field(default=None, name="In msg nelems")
    out_nelems: Any = msgspec.field(default=None, name="Out msg nelems")
    #: raw JSON, decoded only for the few communication ops that need their size
    input_dims: msgspec.Raw = msgspec.field(default=_NULL, name="Input Dims")
    input_type: msgspec.Raw = msgspec.field(default=_NULL, name="Input type")


#: bytes per element of the dtype names Kineto writes ("Input type", "dtype")
_DTYPE_BYTES = {
    "float": 4, "float32": 4, "Float": 4, "double": 8, "float64": 8, "Double": 8,
    "half": 2, "float16": 2, "Half": 2, "c10::Half": 2, "bfloat16": 2, "BFloat16": 2,
    "c10::BFloat16": 2, "long int": 8, "long": 8, "int64": 8, "Long": 8, "int": 4,
    "int32": 4, "Int": 4, "short int": 2, "short": 2, "int16": 2, "Short": 2,
    "unsigned char": 1, "uint8": 1, "Byte": 1, "signed char": 1, "char": 1, "int8": 1,
    "Char": 1, "bool": 1, "Bool": 1, "c10::Float8_e4m3fn": 1, "Float8_e4m3fn": 1,
    "c10::Float8_e5m2": 1, "Float8_e5m2": 1, "c10::complex<float>": 8,
}

def dtype_bytes(name: object) -> int | None:
    """Size in bytes of one element of a Kineto dtype name, None when unknown."""
    return _DTYPE_BYTES.get(name) if isinstance(name, str) else None


def pg_of(a: Args) -> str | None:
    """The process group an event's args name (``"name (description)"``), "" for a bare
    collective, None for none."""
    name, desc = a.pg_name, a.pg_desc
    if name is None and desc is None:
        return None if a.collective is None else ""
    if name is not None and desc is not None and str(desc) != str(name):
        return f"{name} ({desc})"
    return str(name if name is not None else desc)


def msg_bytes(a: Args) -> int:
    """Payload of a collective from its args: ``In msg nelems`` (or ``Out``) x dtype size,
    else the first input's ``Input Dims`` x ``Input type``; -1 when unknown."""
    size = dtype_bytes(a.dtype)
    if size is not None:
        best = max((x for x in (a.in_nelems, a.out_nelems) if type(x) is int), default=None)
        if best is not None:
            return best * size
    try:
        dims, types = msgspec.json.decode(a.input_dims), msgspec.json.decode(a.input_type)
    except (msgspec.DecodeError, RecursionError):
        return -1
    if isinstance(dims, list) and isinstance(types, list) and dims and types:
        size = dtype_bytes(types[0])
        shape = dims[0]
        if size is not None and isinstance(shape, list) and all(type(x) is int for x in shape):
            return math.prod(shape) * size
    return -1


class Event(msgspec.Struct, gc=False):
    """One trace event (Chrome trace format): ``ts`` / ``dur`` in µs; ``ts`` kept as its JSON
    text, converted to ns exactly per chunk (:mod:`.times`)."""

    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    pid: int | str | None = None
    tid: int | str | None = None
    ts: msgspec.Raw = _NULL
    dur: float | None = None
    id: int | str | None = None
    #: raw JSON: skipped by the decoder, decoded only for the events that use their args
    args: msgspec.Raw = _NULL


#: decoder of one chunk of events (a JSON array)
EVENTS = msgspec.json.Decoder(list[Event])

_AT = re.compile(r"^(?P<msg>.*) - at `\$\[(?P<i>\d+)\](?P<path>[^`]*)`$", re.S)


def event_error(path: Path, first_index: int, err: Exception) -> InputError:
    """One line for a decoder error in a chunk whose first event is ``first_index``."""
    m = _AT.match(str(err))
    if m is None:
        return InputError(f"{path}: events from index {first_index}: {err}; re-export the "
                          "trace or check the copy")
    where = m["path"].lstrip(".") or "the event"
    msg = m["msg"].replace("Expected", "expected").replace("`", "")
    return InputError(f"{path}: event {first_index + int(m['i'])}: {where}: {msg}; fix or drop "
                      "that event, or re-export the trace")


def int_in(value: object, bounds: tuple[int, int]) -> bool:
    """``value`` is an int (not a bool) within ``bounds`` (inclusive)."""
    return type(value) is int and bounds[0] <= value <= bounds[1]


@dataclass(frozen=True)
class DeviceInfo:
    sms: int | None
    name: str | None


@dataclass(frozen=True)
class TraceMeta:
    """The top-level keys the importer uses: ``devices`` from ``deviceProperties`` (by id),
    ``distributed`` (``distributedInfo``, empty when absent), ``base_ns``
    (``baseTimeNanoseconds``, None when absent)."""

    devices: dict[int, DeviceInfo] = field(default_factory=dict)
    distributed: dict[str, Any] = field(default_factory=dict)
    base_ns: int | None = None


def _json(kind: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(kind), "a value")


def read_meta(path: Path, keys: dict[str, bytes]) -> TraceMeta:
    """Decode and check the top-level keys the importer uses (others stay undecoded)."""

    def get(key: str) -> Any:
        raw = keys.get(key)
        try:
            return None if raw is None else msgspec.json.decode(raw)
        except RecursionError:
            raise InputError(f"{path}: {key} is nested too deeply; fix or drop the key") from None

    devices: dict[int, DeviceInfo] = {}
    props = get("deviceProperties")
    if props is not None:
        if not isinstance(props, list):
            raise InputError(f"{path}: deviceProperties is {_json(props)}, expected a list of "
                             "objects (one per GPU); fix or drop the key")
        for i, d in enumerate(props):
            if not isinstance(d, dict):
                raise InputError(f"{path}: deviceProperties[{i}] is {_json(d)}, expected an "
                                 "object with id, name, numSms; fix or drop the entry")
            if not int_in(d.get("id"), INT32):
                continue
            sms, name = d.get("numSms"), d.get("name")
            devices[d["id"]] = DeviceInfo(
                sms if int_in(sms, (1, INT32[1])) else None,
                name if isinstance(name, str) else None)
    dist = get("distributedInfo")
    if dist is None:
        dist = {}
    elif not isinstance(dist, dict):
        raise InputError(f"{path}: distributedInfo is {_json(dist)}, expected an object "
                         "(rank, world_size, backend); fix or drop the key")
    base = get("baseTimeNanoseconds")
    if type(base) is not int:
        base = None
    elif not INT64[0] <= base <= INT64[1]:
        raise InputError(f"{path}: baseTimeNanoseconds {base} does not fit int64 ns; fix the "
                         "key or drop it")
    return TraceMeta(devices=devices, distributed=dist, base_ns=base)
