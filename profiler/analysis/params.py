"""Parameters shared by the analyses and the helpers that prepare span frames.

:class:`AnalysisParams` gathers every knob (most come from the run manifest's topology and
parallel config); :func:`pipeline_layout` says which ranks form one pipeline;
:func:`assign_steps` fills unknown steps; :func:`rank_node_map` says which node a rank runs on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = [
    "AnalysisParams",
    "COMM_LANES",
    "pipeline_layout",
    "position_stage",
    "assign_steps",
    "rank_node_map",
    "natural_key",
]

#: Lanes whose spans are communication (expert-parallel / collectives and pipeline P2P).
COMM_LANES = ("comm", "pp_comm")
_STEP_RE = r"^ProfilerStep#(\d+)$"


@dataclass(frozen=True)
class AnalysisParams:
    """Knobs of the analyses. ``from_manifest`` fills the hardware and parallel facts."""

    #: SMs per GPU (topology.sms_per_gpu); the SM split is unavailable without it.
    sms_per_gpu: int | None = None
    #: one direction, bytes/s per GPU (all NVLink links together) and per IB port
    nvlink_peak_bytes_per_s: float | None = None
    ib_peak_bytes_per_s: float | None = None
    #: peak of one NVLink link (device ``nvlink:L``); unknown unless given
    nvlink_link_peak_bytes_per_s: float | None = None
    #: pipeline-parallel degree and world size: ranks ``r`` with the same ``r % (world/pp)``
    #: form one pipeline (PP is the outermost mesh dimension, as in Megatron and torchtitan)
    pp: int | None = None
    world_size: int | None = None
    gpus_per_node: int | None = None
    #: rank -> node name (manifest ``extra["rank_nodes"]``); else derived, see rank_node_map
    rank_nodes: Mapping[int, str] = field(default_factory=dict)
    straggler_threshold: float = 3.5
    #: span columns (besides kind and op) that define peers for the straggler z-score
    straggler_peer_keys: tuple[str, ...] = ()
    #: also return the SM split time series (large: two rows per kernel)
    sm_series: bool = False

    def __post_init__(self) -> None:
        if self.sms_per_gpu is not None and self.sms_per_gpu <= 0:
            raise InputError(f"sms_per_gpu must be positive, got {self.sms_per_gpu}")
        if self.straggler_threshold <= 0:
            raise InputError(
                f"straggler threshold must be positive, got {self.straggler_threshold}"
            )
        bad = set(self.straggler_peer_keys) - {"stage", "name", "microbatch"}
        if bad:
            raise InputError(
                f"straggler peer keys {sorted(bad)} unknown; use any of stage, name, microbatch"
            )

    @classmethod
    def from_manifest(cls, manifest: Any, **overrides: Any) -> AnalysisParams:
        topo, par = manifest.topology, manifest.parallel
        raw_nodes = (manifest.extra or {}).get("rank_nodes") or {}
        kw: dict[str, Any] = dict(
            sms_per_gpu=topo.sms_per_gpu,
            nvlink_peak_bytes_per_s=topo.nvlink_peak_bytes_per_s,
            ib_peak_bytes_per_s=topo.ib_peak_bytes_per_s,
            pp=par.pp,
            world_size=par.world_size,
            gpus_per_node=topo.gpus_per_node,
            rank_nodes={int(k): str(v) for k, v in raw_nodes.items()},
        )
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def with_(self, **changes: Any) -> AnalysisParams:
        return replace(self, **changes)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``node2`` before ``node10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def rank_node_map(
    ranks: Iterable[int], nodes: Iterable[str], params: AnalysisParams
) -> dict[int, str]:
    """Node of each rank: ``params.rank_nodes`` when given; otherwise, with
    ``gpus_per_node`` known, rank ``r`` runs on the ``r // gpus_per_node``-th counter node in
    natural order (``node2`` before ``node10``). Ranks with no known node are left out."""
    ranks = [int(r) for r in ranks]
    if params.rank_nodes:
        return {r: params.rank_nodes[r] for r in ranks if r in params.rank_nodes}
    gpn = params.gpus_per_node
    ordered = sorted(nodes, key=natural_key)
    if not gpn or not ordered:
        return {}
    return {r: ordered[r // gpn] for r in ranks if r // gpn < len(ordered)}


def position_stage(frame: pd.DataFrame, keys: Sequence[str] = ("rank",)) -> pd.Series:
    """Per group of ``keys``: the smallest stage among its rows of its smallest micro-batch
    (the smallest stage when no row has a micro-batch). Needs columns ``stage`` and
    ``microbatch`` (nullable). This is a rank's position in its pipeline: rank r of 1F1B, ZB1P,
    DualPipe and DualPipeV runs micro-batch 0 at stage r, whereas the smallest stage held
    cannot tell DualPipe's ranks r and PP-1-r apart (both hold stages r and PP-1-r)."""
    keys = list(keys)
    staged = frame.loc[frame["stage"].notna(), [*keys, "stage", "microbatch"]]
    mb = staged["microbatch"].astype("Float64")
    first_mb = mb.groupby([staged[k] for k in keys]).transform("min")
    keep = (mb == first_mb).fillna(False) | first_mb.isna()
    return staged.loc[keep.to_numpy(dtype=bool)].groupby(keys)["stage"].min().astype("Int64")


def pipeline_layout(
    ranks: Iterable[int], params: AnalysisParams, position: pd.Series | None = None
) -> pd.DataFrame:
    """Which pipeline each rank belongs to and its position in it.

    Columns: ``rank``; ``pipeline`` (pipeline id); ``pp_rank`` (position 0..PP-1 in the
    pipeline). With ``pp`` and ``world_size`` known (and world divisible by pp), PP is the
    outermost mesh dimension: ``pipeline = rank % (world/pp)``, ``pp_rank = rank // (world/pp)``.
    Otherwise ``pp_rank`` is the dense order of ``position`` (indexed by rank:
    :func:`position_stage`) and ranks at the same position are replicas (expert / data
    parallel): the n-th of them by rank id belongs to pipeline n. Without positions all ranks
    form one pipeline in rank order. :func:`profiler.compare.compare` and every analysis use
    this one rule.
    """
    r = np.array(sorted({int(x) for x in ranks}), dtype=np.int64)
    pp, world = params.pp, params.world_size
    if pp and world and world % pp == 0 and (len(r) == 0 or r.max() < world):
        per = world // pp
        return pd.DataFrame({"rank": r, "pipeline": r % per, "pp_rank": r // per})
    if position is not None and len(r):
        sm = position.reindex(r)
        if sm.notna().all():
            pos = sm.rank(method="dense").to_numpy(dtype=np.int64) - 1
            pipeline = pd.Series(pos).groupby(pos).cumcount().to_numpy(dtype=np.int64)
            return pd.DataFrame({"rank": r, "pipeline": pipeline, "pp_rank": pos})
    return pd.DataFrame({"rank": r, "pipeline": 0, "pp_rank": np.arange(len(r), dtype=np.int64)})


def assign_steps(spans: pd.DataFrame) -> np.ndarray:
    """Step of every span as int64. Known steps are kept. A span with a null step takes the
    step ``N`` of the last ``ProfilerStep#N`` span of its rank that started at or before it
    (GPU kernels run after their host step began, so 'last started' beats 'contains'); with
    no such annotation the step is ``-1``, meaning the whole run is one step."""
    step = spans["step"]
    if len(spans) == 0 or not step.isna().any():
        return step.to_numpy(dtype=np.int64, na_value=-1)
    out = step.to_numpy(dtype=np.int64, na_value=-1)
    names = spans["name"].astype("str")
    is_mark = names.str.match(_STEP_RE).to_numpy(dtype=bool, na_value=False)
    if not is_mark.any():
        return out
    marks = pd.DataFrame({
        "rank": spans["rank"].to_numpy()[is_mark],
        "start_ns": spans["start_ns"].to_numpy()[is_mark],
        "mark": names[is_mark].str.extract(_STEP_RE, expand=False).astype("int64").to_numpy(),
    }).sort_values("start_ns", kind="stable")
    missing = np.flatnonzero(step.isna().to_numpy())
    probe = pd.DataFrame({
        "rank": spans["rank"].to_numpy()[missing],
        "start_ns": spans["start_ns"].to_numpy()[missing],
        "pos": missing,
    }).sort_values("start_ns", kind="stable")
    hit = pd.merge_asof(probe, marks, on="start_ns", by="rank", direction="backward")
    out[hit["pos"].to_numpy()] = hit["mark"].to_numpy(dtype=np.int64, na_value=-1)
    return out
