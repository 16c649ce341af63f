"""Clock alignment: per-rank offsets from matched events, applied only on request.

Model: ``true = recorded + offset_ns[rank]``; the reference rank's offset is 0. The reference
is the smallest rank of each linked part of the run: rank 0 when events link everything.

1. **Collectives.** Comm-lane spans with a process group end at the same true time on every
   participant. The n-th span of a (pg, name, kind) on each rank is one collective. Offsets
   within a set of ranks linked by collectives come from a median polish (alternate: group
   time = median of aligned ends; rank offset = median of group time − recorded end) — robust
   to a few late kernels, exact without noise.
2. **P2P.** ``pp_comm`` spans named send / recv with a stage and an op are matched between
   neighbouring stages: a forward (``F``) send of micro-batch m at stage s pairs with the
   forward recv of m at stage s+1, a backward (``B``/``I``) send at s with the backward recv
   at s−1 (the n-th in start order when micro-batches are unknown). Pairs must join two ranks
   of one pipeline at neighbouring positions. Causality (recv end ≥ send start) bounds the
   offset difference of the two ranks from one side per direction; where messages flow both
   ways the estimate is the middle of the feasible interval (exact for symmetric latency).
   These bounds link the collective groups (or single ranks) into one clock by least
   squares over the group graph.

Map (:func:`alignment_events`, per rank) and reduce (:func:`clock_offsets`) are separate so
the engine can run the map next to the data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["alignment_events", "clock_offsets", "apply_offsets"]

_P2P_KEYS = ["step", "dir", "src_stage", "dst_stage", "mb", "seq"]


def alignment_events(spans: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-rank events for alignment: ``{"collectives": ..., "p2p": ...}``.

    ``collectives``: ``rank``, ``pg``, ``name``, ``kind``, ``seq`` (n-th on the rank),
    ``end_ns`` (ns, as recorded). ``p2p``: ``rank``, ``role`` (send/recv), the match keys
    ``step``, ``dir`` (fwd/bwd), ``src_stage``, ``dst_stage``, ``mb`` (-1 unknown), ``seq``,
    and ``start_ns``, ``end_ns`` (ns)."""
    lane = spans["lane"]
    coll = spans.loc[(lane == "comm") & spans["pg"].notna(),
                     ["rank", "pg", "name", "kind", "start_ns", "end_ns"]]
    coll = coll.sort_values(["rank", "start_ns"], kind="stable")
    coll = coll.assign(seq=coll.groupby(["rank", "pg", "name", "kind"], sort=False).cumcount())
    coll = coll[["rank", "pg", "name", "kind", "seq", "end_ns"]].reset_index(drop=True)

    pp = spans.loc[(lane == "pp_comm") & spans["stage"].notna()]
    name = pp["name"].astype("str").str.lower()
    role = np.select([name.str.contains("send", regex=False).to_numpy(dtype=bool),
                      name.str.contains("recv", regex=False).to_numpy(dtype=bool)],
                     ["send", "recv"], "")
    op = pp["op"].astype("str")
    fwd = (op == "F").to_numpy(dtype=bool)
    bwd = op.isin(["B", "I"]).to_numpy(dtype=bool)
    keep = (role != "") & (fwd | bwd)
    stage = pp["stage"].to_numpy(dtype=np.int64, na_value=-1)
    step_dir = np.where(fwd, 1, -1)
    send = role == "send"
    src = np.where(send, stage, stage - step_dir)
    dst = np.where(send, stage + step_dir, stage)
    p2p = pd.DataFrame({
        "rank": pp["rank"].to_numpy(dtype=np.int64),
        "role": role,
        "step": pp["step"].to_numpy(dtype=np.int64, na_value=-1),
        "dir": np.where(fwd, "fwd", "bwd"),
        "src_stage": src,
        "dst_stage": dst,
        "mb": pp["microbatch"].to_numpy(dtype=np.int64, na_value=-1),
        "start_ns": pp["start_ns"].to_numpy(dtype=np.int64),
        "end_ns": pp["end_ns"].to_numpy(dtype=np.int64),
    })[keep]
    p2p = p2p.sort_values(["rank", "start_ns"], kind="stable")
    p2p["seq"] = p2p.groupby(["rank", "role", *_P2P_KEYS[:-1]], sort=False).cumcount()
    return {"collectives": coll, "p2p": p2p.reset_index(drop=True)}


def _components(group: np.ndarray, node: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Label of each entry of ``nodes``: the smallest node linked to it through groups
    (label propagation; each pass is vectorised, passes <= graph diameter)."""
    label = pd.Series(nodes, index=nodes)
    if len(group) == 0:
        return label.to_numpy()
    while True:
        lab = label.reindex(node).to_numpy()
        gmin = pd.Series(lab).groupby(group).transform("min").to_numpy()
        new = pd.Series(gmin).groupby(node).min().reindex(nodes).fillna(label).astype(np.int64)
        new = np.minimum(new, label)
        if (new == label).all():
            return label.to_numpy()
        label = new


def _median_polish(group: np.ndarray, rank: np.ndarray, value: np.ndarray,
                   ref: pd.Series, iters: int = 200) -> pd.Series:
    ranks = ref.index.to_numpy()
    off = pd.Series(0.0, index=ranks)
    for _ in range(iters):
        x = value + off.reindex(rank).to_numpy()
        t = pd.Series(x).groupby(group).transform("median").to_numpy()
        new = pd.Series(t - value).groupby(rank).median().reindex(ranks)
        new = new - new.reindex(ref.to_numpy()).to_numpy()
        done = np.nanmax(np.abs(new.to_numpy() - off.to_numpy()), initial=0.0) < 0.01
        off = new
        if done:
            break
    return off


def _p2p_pairs(p2p: pd.DataFrame, layout: pd.DataFrame | None) -> pd.DataFrame:
    """Matched (send on a, recv on b) pairs; with a layout only within one pipeline (part of
    the join key, so data-parallel pipelines never multiply the join) between neighbours."""
    keys = list(_P2P_KEYS)
    if layout is not None:
        lay = layout.set_index("rank")
        p2p = p2p.assign(pipeline=p2p["rank"].map(lay["pipeline"]),
                         pp_rank=p2p["rank"].map(lay["pp_rank"]))
        keys.append("pipeline")
    s = p2p.loc[p2p["role"] == "send"].rename(
        columns={"rank": "a", "start_ns": "send_start", "pp_rank": "pa"})
    r = p2p.loc[p2p["role"] == "recv"].rename(
        columns={"rank": "b", "end_ns": "recv_end", "pp_rank": "pb"})
    extra = ["pa"] if layout is not None else []
    pairs = s[["a", "send_start", *extra, *keys]].merge(
        r[["b", "recv_end", *(["pb"] if extra else []), *keys]], on=keys)
    ok = pairs["a"] != pairs["b"]
    if layout is not None:
        ok &= (pairs["pa"] - pairs["pb"]).abs() == 1
    return pairs.loc[ok, ["a", "b", "send_start", "recv_end"]].reset_index(drop=True)


def clock_offsets(events: Mapping[str, pd.DataFrame], *,
                  layout: pd.DataFrame | None = None) -> pd.DataFrame:
    """Estimate per-rank clock offsets from :func:`alignment_events` of all ranks.

    One row per rank seen in any event. Columns: ``rank``; ``offset_ns`` (ns to add to the
    rank's recorded times; nullable: null when no event links the rank to another);
    ``reference_rank`` (the rank whose offset is 0 in this rank's linked part; nullable);
    ``collective_groups`` (matched collectives the rank took part in); ``p2p_pairs``
    (matched send/recv pairs); ``residual_ns`` (ns, median |aligned end − group median| over
    the rank's collectives, NaN without any); ``spread_ns`` (ns, median over the rank's
    collectives of max − min aligned end); ``p2p_violations`` (pairs where the aligned recv
    ends before the aligned send starts).
    """
    coll = events.get("collectives", pd.DataFrame(columns=["rank"]))
    p2p = events.get("p2p", pd.DataFrame(columns=["rank"]))
    ranks = np.unique(np.concatenate([coll["rank"].to_numpy(dtype=np.int64),
                                      p2p["rank"].to_numpy(dtype=np.int64)]))
    # collectives: groups of >= 2 ranks
    if len(coll):
        gcode = coll.groupby(["pg", "name", "kind", "seq"], sort=False).ngroup().to_numpy()
        size = np.bincount(gcode)
        keep = size[gcode] >= 2
        crank = coll["rank"].to_numpy(dtype=np.int64)[keep]
        cend = coll["end_ns"].to_numpy(dtype=np.int64)[keep]
        gcode = gcode[keep]
    else:
        crank = cend = gcode = np.empty(0, dtype=np.int64)
    base = int(cend.min()) if len(cend) else 0
    cval = (cend - base).astype(np.float64)
    comp = pd.Series(_components(gcode, crank, ranks), index=ranks)
    within = _median_polish(gcode, crank, cval, comp) if len(gcode) else pd.Series(0.0, ranks)
    within = within.reindex(ranks).fillna(0.0)

    pairs = _p2p_pairs(p2p, layout) if len(p2p) else pd.DataFrame(
        columns=["a", "b", "send_start", "recv_end"])
    offsets = within.copy()
    reference = comp.copy()
    sizes = comp.map(comp.value_counts())
    linked = pd.Series(sizes.to_numpy() >= 2, index=ranks)
    if len(pairs):
        a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
        ca, cb = comp.reindex(a).to_numpy(), comp.reindex(b).to_numpy()
        # o_b - o_a >= send_start_a - recv_end_b; in component terms O_cb - O_ca >= bound
        bound = (pairs["send_start"].to_numpy() - pairs["recv_end"].to_numpy()).astype(float)
        bound = bound - within.reindex(b).to_numpy() + within.reindex(a).to_numpy()
        cross = ca != cb
        lo, hi = np.minimum(ca, cb)[cross], np.maximum(ca, cb)[cross]
        lower = np.where(ca[cross] == lo, bound[cross], -np.inf)
        upper = np.where(ca[cross] == lo, np.inf, -bound[cross])
        edges = pd.DataFrame({"lo": lo, "hi": hi, "lower": lower, "upper": upper})
        edges = edges.groupby(["lo", "hi"]).agg(lower=("lower", "max"), upper=("upper", "min"))
        edges = edges.loc[np.isfinite(edges["lower"]) & np.isfinite(edges["upper"])].reset_index()
        if len(edges):
            comp_off, comp_ref = _solve_components(edges, np.unique(comp.to_numpy()))
            offsets = within + comp_off.reindex(comp.to_numpy()).to_numpy()
            reference = pd.Series(comp_ref.reindex(comp.to_numpy()).to_numpy(), index=ranks)
            in_edges = np.isin(comp.to_numpy(), edges[["lo", "hi"]].to_numpy().ravel())
            linked |= in_edges
    return _report(ranks, offsets, reference, linked.to_numpy(), crank, cval, gcode, pairs)


def _solve_components(edges: pd.DataFrame, comps: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """Least-squares offsets of linked components from interval-midpoint edge estimates."""
    idx = pd.Index(comps)
    d = (edges["lower"] + edges["upper"]).to_numpy() / 2
    lo, hi = idx.get_indexer(edges["lo"]), idx.get_indexer(edges["hi"])
    label = pd.Series(_components(np.repeat(np.arange(len(edges)), 2),
                                  np.column_stack([comps[lo], comps[hi]]).ravel(), comps),
                      index=comps)
    refs = pd.Series(np.unique(label.to_numpy()))  # each linked part's smallest component
    m, n = len(edges), len(comps)
    mat = np.zeros((m + len(refs), n))
    mat[np.arange(m), hi] = 1.0
    mat[np.arange(m), lo] = -1.0
    mat[m + np.arange(len(refs)), idx.get_indexer(refs.to_numpy())] = 1e6
    rhs = np.concatenate([d, np.zeros(len(refs))])
    sol = np.linalg.lstsq(mat, rhs, rcond=None)[0]
    return pd.Series(sol, index=comps), label


def _report(ranks: np.ndarray, offsets: pd.Series, reference: pd.Series, linked: np.ndarray,
            crank: np.ndarray, cval: np.ndarray, gcode: np.ndarray,
            pairs: pd.DataFrame) -> pd.DataFrame:
    x = cval + offsets.reindex(crank).to_numpy()
    g = pd.Series(x).groupby(gcode)
    dev = np.abs(x - g.transform("median").to_numpy())
    spread = (g.transform("max") - g.transform("min")).to_numpy()
    n_coll = pd.Series(1, index=crank).groupby(level=0).size()
    a = pairs["a"].to_numpy(dtype=np.int64)
    b = pairs["b"].to_numpy(dtype=np.int64)
    viol = (pairs["recv_end"].to_numpy() + offsets.reindex(b).to_numpy()
            < pairs["send_start"].to_numpy() + offsets.reindex(a).to_numpy())
    both = np.concatenate([a, b])
    n_p2p = pd.Series(1, index=both).groupby(level=0).size()
    n_viol = pd.Series(np.concatenate([viol, viol]).astype(int), index=both).groupby(level=0).sum()
    alone = ~linked
    off = pd.array(np.round(offsets.reindex(ranks).to_numpy()).astype(np.int64), dtype="Int64")
    off[alone] = pd.NA
    ref = pd.array(reference.reindex(ranks).to_numpy().astype(np.int64), dtype="Int64")
    ref[alone] = pd.NA
    return pd.DataFrame({
        "rank": ranks,
        "offset_ns": off,
        "reference_rank": ref,
        "collective_groups": n_coll.reindex(ranks).fillna(0).to_numpy(dtype=np.int64),
        "p2p_pairs": n_p2p.reindex(ranks).fillna(0).to_numpy(dtype=np.int64),
        "residual_ns": pd.Series(dev).groupby(crank).median().reindex(ranks).to_numpy(),
        "spread_ns": pd.Series(spread).groupby(crank).median().reindex(ranks).to_numpy(),
        "p2p_violations": n_viol.reindex(ranks).fillna(0).to_numpy(dtype=np.int64),
    })


def apply_offsets(spans: pd.DataFrame, offsets: pd.DataFrame | Mapping[int, int]) -> pd.DataFrame:
    """A copy of ``spans`` with ``start_ns``/``end_ns`` shifted by each rank's offset (ns).
    ``offsets`` is a :func:`clock_offsets` table or a rank -> ns mapping; missing or null
    offsets leave a rank unchanged."""
    if isinstance(offsets, pd.DataFrame):
        table = offsets.set_index("rank")["offset_ns"]
    else:
        table = pd.Series(dict(offsets), dtype="Int64")
    shift = spans["rank"].map(table).astype("Int64").fillna(0).to_numpy(dtype=np.int64)
    out = spans.copy()
    out["start_ns"] = spans["start_ns"].to_numpy(dtype=np.int64) + shift
    out["end_ns"] = spans["end_ns"].to_numpy(dtype=np.int64) + shift
    return out
