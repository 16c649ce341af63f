"""Arrow columns straight from numpy buffers and Python strings.

``pa.array`` on a list or an object array imports pandas on its first call (pyarrow checks
whether the input is a pandas object): ~0.35 s of CPU and ~40 MB per process, paid by every
worker of a parallel import. Building the arrays from buffers avoids that and is as fast; the
arrays are the ones ``pa.array`` would build (tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["ints", "nullable", "strings"]

_INT64 = pa.int64()
#: Arrow integer type -> (numpy dtype, min, max)
_NP: dict[pa.DataType, tuple[type, int, int]] = {
    pa.int32(): (np.int32, -(1 << 31), (1 << 31) - 1),
    _INT64: (np.int64, -(1 << 63), (1 << 63) - 1),
}


def ints(values: Any, typ: pa.DataType = _INT64, valid: np.ndarray | None = None
         ) -> pa.Array:
    """Integer column of ``typ`` (int32 / int64); ``valid``: False where null."""
    src = np.asarray(values)
    dtype, lo, hi = _NP[typ]
    if src.dtype != dtype:
        if len(src) and (src.min() < lo or src.max() > hi):
            raise OverflowError(f"a value does not fit {typ}")  # the importer checks first
        src = src.astype(dtype)
    arr = np.ascontiguousarray(src)
    n = len(arr)
    bitmap, nulls = None, 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        nulls = int(n - np.count_nonzero(valid))
        if nulls:
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(arr)], null_count=nulls)


def nullable(values: np.ndarray, typ: pa.DataType, missing: np.ndarray | None = None
             ) -> pa.Array:
    """Integer column; negative values (the "none" sentinel) or ``missing`` become null."""
    values = np.asarray(values)
    mask = values < 0 if missing is None else np.asarray(missing, dtype=bool)
    return ints(np.where(mask, 0, values), typ, ~mask)


def strings(values: Sequence[str | None] | Any) -> pa.Array:
    """String column from str / None values: each distinct value encoded once, then one
    dictionary decode in Arrow."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    n = len(values)
    if n and values[0] is not None and values.count(values[0]) == n:  # constant (kind, lane)
        one = values[0].encode()
        if n * len(one) <= np.iinfo(np.int32).max:
            offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(one))
            return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                          pa.py_buffer(one * n)])
    index: dict[str | None, int] = {}
    codes = np.fromiter(map(index.setdefault, values, range(len(values))), dtype=np.int64,
                        count=len(values))
    # codes point at each value's first occurrence: renumber them 0..distinct-1
    first = np.flatnonzero(codes == np.arange(len(codes)))
    dense = np.zeros(len(codes), np.int64)
    dense[first] = np.arange(len(first))
    codes = dense[codes]
    uniq = list(index)
    enc = [b"" if v is None else v.encode() for v in uniq]
    offsets = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise OverflowError("more than 2 GiB of distinct strings in one column")
    valid = np.array([v is not None for v in uniq], dtype=bool)
    nulls = int(len(uniq) - np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    dictionary = pa.Array.from_buffers(
        pa.string(), len(uniq), [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                 pa.py_buffer(b"".join(enc))], null_count=nulls)
    if len(uniq) == len(values):
        return dictionary
    return dictionary.take(ints(codes, pa.int32()))
