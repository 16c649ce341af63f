"""Which Kineto categories the importer reads, matched case-insensitively (older Kineto and
other devices spell them differently), and the count of every category it does not read, so that
an import never drops events without a word."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .events import Event

__all__ = ["Categories", "CPU_OP", "FLOW", "LAUNCH", "KERNEL", "MEMCPY", "MEMSET",
           "ANNOTATION", "GPU_ANNOTATION"]

#: category codes (0: not read)
CPU_OP, FLOW, LAUNCH, KERNEL, MEMCPY, MEMSET, ANNOTATION, GPU_ANNOTATION = range(1, 9)
_CAT: dict[str | None, int] = {
    "cpu_op": CPU_OP, "ac2g": FLOW, "cuda_runtime": LAUNCH, "cuda_driver": LAUNCH,
    "kernel": KERNEL, "gpu_memcpy": MEMCPY, "gpu_memset": MEMSET,
    "user_annotation": ANNOTATION, "gpu_user_annotation": GPU_ANNOTATION}
#: the names older Kineto versions give the same categories (matched lower-cased)
_ALIASES = {"runtime": "cuda_runtime", "driver": "cuda_driver", "memcpy": "gpu_memcpy",
            "memset": "gpu_memset"}


class Categories:
    """Category code of each event: known categories matched case-insensitively (older Kineto
    writes ``"Kernel"``, ``"Memcpy"``, ``"Runtime"``); every other category is counted in
    ``skipped`` (category -> events), so that nothing is dropped without a word."""

    def __init__(self) -> None:
        self.codes: dict[str | None, int] = dict(_CAT)
        self.codes[None] = 0
        self.skipped: Counter[str] = Counter()

    def code(self, cat: str | None) -> int:
        assert cat is not None
        low = cat.lower()
        code = _CAT.get(low, _CAT.get(_ALIASES.get(low, ""), 0))
        self.codes[cat] = code
        return code

    def of(self, chunk: list[Event]) -> np.ndarray:
        get = self.codes.get
        found = [get(e.cat, -1) for e in chunk]  # one dict lookup per event
        if -1 in found:  # a spelling not seen yet
            found = [self.code(e.cat) if c < 0 else c for c, e in zip(found, chunk, strict=True)]
        codes = np.array(found, dtype=np.int8)
        if not codes.all():
            self.skipped.update(c for c in (chunk[i].cat for i in np.flatnonzero(codes == 0))
                                if c is not None)
        return codes
