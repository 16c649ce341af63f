"""Is a GPU kernel communication or compute? One reusable, pure rule.

The Kineto importer and the SM-split probe both call :func:`classify_kernels`. It decides by
**stream, process group and name together**, never by the name alone, because names lie in
both directions: an MoE "combine" kernel is often a plain weighted sum on the compute stream,
and DeepEP's ``cached_notify`` or ``get_dispatch_layout`` are small helpers that only make
sense as part of the communication on their stream.

Evidence per kernel
    * **user pattern** -- a ``--comm-pattern`` regular expression (``re.search``) matches the
      name. Forces communication; nothing else is consulted.
    * **process group** -- the kernel's args name a process group or a collective
      (``Process Group Name``, ``Process Group Description``, ``Collective name`` in newer
      Kineto). Only communication kernels carry these.
    * **strong name** -- an NCCL/RCCL kernel (``ncclDevKernel_*``, ``ncclKernel_*``) or a kernel
      in the DeepEP namespaces (``deep_ep::``, ``dpsk::ep::``, ``*::internode::``,
      ``*::intranode::``, ``*::internode_ll::``). These only ever move data.
    * **weak name** -- a word such as ``dispatch``, ``combine``, ``notify``, ``all_to_all``,
      ``all_gather``, ``all_reduce``, ``reduce_scatter``, ``send``, ``recv``, ``barrier``,
      ``nvshmem``: suggestive, but model code uses the same words for compute.
    * **compute name** -- GEMM / attention / elementwise / norm / cast ... (``gemm``,
      ``cutlass``, ``xmma``, ``flash``, ``elementwise``, ``reduce_kernel``, ``layer_norm``,
      ``cast``, ``transpose``, ``triton_`` ...) and no comm word.

Stream evidence
    A stream (``(device, stream)`` key) is a **communication stream** when more than
    ``stream_majority`` (default one half) of its kernels carry comm evidence (pattern, process
    group, strong or weak name).

Decision (first rule that applies)
    1. pattern -> comm (``pattern``)
    2. process group -> comm (``pg``)
    3. strong name -> comm on any stream (``strong-name``): these kernels move data whatever
       stream they run on (DeepEP's low-latency kernels run on the compute stream)
    4. weak name on a comm stream -> comm (``name+stream``)
    5. weak name elsewhere -> compute (``weak-name-off-comm-stream``)
    6. on a comm stream: a compute-named kernel stays compute (``compute-name``); any other
       kernel that fits in the stream's communication SM budget (its grid blocks, capped at
       the SMs per GPU, are at most the largest footprint of a comm-evidenced kernel on that
       stream) is a helper and counts as comm (``helper-on-comm-stream``); a larger one is
       compute (``large-on-comm-stream``)
    7. otherwise compute (``default``)

The SMs a kernel holds are ``min(grid blocks, SMs per GPU)`` (an NCCL kernel's grid x is its
channel count; DeepEP launches one block per SM it was given).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PG_ARG_KEYS",
    "REASONS",
    "KernelClasses",
    "classify_kernels",
    "compile_patterns",
    "name_evidence",
    "host_comm_lane",
]

#: Every reason :func:`classify_kernels` can give, comm reasons first.
REASONS = (
    "pattern",
    "pg",
    "strong-name",
    "name+stream",
    "helper-on-comm-stream",
    "weak-name-off-comm-stream",
    "compute-name",
    "large-on-comm-stream",
    "default",
)
_COMM_REASONS = frozenset(REASONS[:5])

_STRONG = re.compile(
    r"nccl(Dev)?Kernel|rccl\w*Kernel|\b(deep_ep|dpsk::ep)::|::(internode|intranode|internode_ll)::"
)
# words delimited by anything that is not a letter (``_``, ``::``, ``<``, digits, start/end)
_WEAK = re.compile(
    r"(?i)(?<![a-z])(dispatch|combine|notify|all_?to_?all|all_?gather|all_?reduce|"
    r"reduce_?scatter|sendrecv|send|recv|barrier|nvshmem|cross_device_reduce|p2p)(?![a-z])"
)
_COMPUTE = re.compile(
    r"(?i)gemm|gemv|matmul|cutlass|cublas|xmma|wgmma|mma_|flash|attn|attention|elementwise|"
    r"reduce_kernel|softmax|layer_?norm|rms_?norm|\bln_|rotary|conv|triton_|cast|transpose|"
    r"swiglu|silu|gelu|topk|sort|scatter|gather|index|embedding|copy|fill|adam|sgd"
)

#: Kineto kernel-arg keys that name a process group or collective (newer PyTorch).
PG_ARG_KEYS = ("Process Group Name", "Process Group Description", "Collective name")


@dataclass(frozen=True)
class KernelClasses:
    """Result of :func:`classify_kernels`, aligned with its inputs.

    ``is_comm``: bool per kernel; ``reason``: one of :data:`REASONS` per kernel;
    ``comm_streams``: the stream keys judged communication streams;
    ``stream_comm_share``: per stream key, the share (0..1) of its kernels with comm evidence.
    """

    is_comm: np.ndarray
    reason: np.ndarray
    comm_streams: frozenset[Hashable]
    stream_comm_share: dict[Hashable, float] = field(default_factory=dict)

    def reason_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.reason.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def compile_patterns(patterns: Iterable[str | re.Pattern[str]]) -> tuple[re.Pattern[str], ...]:
    """Compile user ``--comm-pattern`` expressions; raises ``ValueError`` naming a bad one."""
    out = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(p)
            continue
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"--comm-pattern {p!r} is not a valid regular expression ({e})") from None
    return tuple(out)


def name_evidence(name: str, patterns: Sequence[re.Pattern[str]] = ()) -> str:
    """Classify a kernel name alone: ``pattern``, ``strong``, ``weak``, ``compute`` or
    ``neutral``. Only an input to :func:`classify_kernels`; never a decision by itself."""
    if any(p.search(name) for p in patterns):
        return "pattern"
    if _STRONG.search(name):
        return "strong"
    if _WEAK.search(name):
        return "weak"
    if _COMPUTE.search(name):
        return "compute"
    return "neutral"


def _factorize(values: Iterable[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
    """Codes (int64, one per value) and the distinct values in first-seen order (C-level
    loops: ``dict.fromkeys`` and a ``map`` of lookups, ~3x a per-value Python generator)."""
    vals = list(_plain(values))
    uniq = list(dict.fromkeys(vals))
    code = {v: i for i, v in enumerate(uniq)}
    return np.fromiter(map(code.__getitem__, vals), dtype=np.int64, count=len(vals)), uniq


def _plain(values: Iterable[Hashable]) -> Iterable[Hashable]:
    """numpy scalars -> Python scalars, so that keys compare and hash as users expect."""
    return values.tolist() if isinstance(values, np.ndarray) else values


def classify_kernels(
    names: Sequence[str] | np.ndarray,
    streams: Sequence[Hashable] | np.ndarray,
    grid_blocks: Sequence[float] | np.ndarray | None = None,
    has_pg: Sequence[bool] | np.ndarray | None = None,
    *,
    sms_per_gpu: int | Sequence[int] | np.ndarray = 132,
    comm_patterns: Iterable[str | re.Pattern[str]] = (),
    stream_majority: float = 0.5,
) -> KernelClasses:
    """Decide communication vs compute for each kernel (see the module docstring).

    ``names``: kernel names; ``streams``: a hashable stream key per kernel, e.g.
    ``(device, stream)``; ``grid_blocks``: grid x*y*z per kernel (NaN when unknown);
    ``has_pg``: whether the kernel's args name a process group / collective;
    ``sms_per_gpu``: SMs of the kernel's GPU (scalar or per kernel);
    ``comm_patterns``: user regular expressions that force communication.
    Pure: no I/O, inputs are not modified. Runs one regex pass per distinct name.
    """
    n = len(names)
    patterns = compile_patterns(comm_patterns)
    if n == 0:
        return KernelClasses(np.zeros(0, bool), np.zeros(0, object), frozenset(), {})
    name_codes, uniq_names = _factorize(names)
    ev_of_name = np.array([name_evidence(str(s), patterns) for s in uniq_names], dtype=object)
    ev = ev_of_name[name_codes]
    pg = np.zeros(n, bool) if has_pg is None else np.asarray(has_pg, dtype=bool)
    blocks = (
        np.full(n, np.nan) if grid_blocks is None else np.asarray(grid_blocks, dtype=np.float64)
    )
    sms = np.broadcast_to(np.asarray(sms_per_gpu, dtype=np.float64), (n,))
    footprint = np.minimum(blocks, sms)  # NaN when the grid is unknown (np.fmin would not be)

    is_pattern = ev == "pattern"
    is_strong = ev == "strong"
    is_weak = ev == "weak"
    evidence = is_pattern | pg | is_strong | is_weak

    stream_codes, uniq_streams = _factorize(streams)
    n_streams = len(uniq_streams)
    total = np.bincount(stream_codes, minlength=n_streams)
    comm_count = np.bincount(stream_codes, weights=evidence, minlength=n_streams)
    share = comm_count / np.maximum(total, 1)
    comm_stream = share > stream_majority
    on_comm = comm_stream[stream_codes]

    # the communication SM budget of each stream: largest footprint of an evidenced kernel
    budget = np.full(n_streams, -np.inf)
    fp_ev = np.where(evidence & ~np.isnan(footprint), footprint, -np.inf)
    np.maximum.at(budget, stream_codes, fp_ev)
    fits = footprint <= budget[stream_codes]  # False for NaN footprint

    reason = np.full(n, "default", dtype=object)
    # assigned from the last rule to the first so that earlier rules win
    rest = on_comm & ~evidence
    reason[rest & ~fits] = "large-on-comm-stream"
    reason[rest & fits] = "helper-on-comm-stream"
    reason[rest & (ev == "compute")] = "compute-name"
    reason[is_weak & ~on_comm] = "weak-name-off-comm-stream"
    reason[is_weak & on_comm] = "name+stream"
    reason[is_strong] = "strong-name"
    reason[pg] = "pg"
    reason[is_pattern] = "pattern"
    is_comm = np.isin(reason, list(_COMM_REASONS))
    return KernelClasses(
        is_comm=is_comm,
        reason=reason,
        comm_streams=frozenset(k for k, c in zip(uniq_streams, comm_stream, strict=True) if c),
        stream_comm_share={k: float(s) for k, s in zip(uniq_streams, share, strict=True)},
    )


# ---------------------------------------------------------------------------------------
# host-side (CPU) communication ops: gloo / c10d / record_param_comms

_HOST_COMM = re.compile(r"^(gloo:|nccl:|c10d::|record_param_comms$)")
_P2P = re.compile(r"(?i)(?<![a-z])(send|recv|isend|irecv|sendrecv|batch_isend_irecv)(?![a-z])")


def host_comm_lane(name: str, collective: str | None = None) -> str | None:
    """Lane of a host-side communication op, or None when ``name`` is not one.

    ``gloo:*``, ``nccl:*``, ``c10d::*`` and ``record_param_comms`` are communication; point to
    point ops (send / recv, also a ``record_param_comms`` whose ``collective`` is one) go to
    ``pp_comm``, collectives (all_to_all, all_reduce, ...) to ``comm``.
    """
    if not _HOST_COMM.match(name):
        return None
    what = collective if (name == "record_param_comms" and collective) else name
    return "pp_comm" if _P2P.search(what) else "comm"
