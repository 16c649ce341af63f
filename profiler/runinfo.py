"""What a run holds, in one dictionary: the data behind ``dualscope info``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .store import RunReader

__all__ = ["run_info"]


def run_info(reader: RunReader, *, top_kernels: int = 8) -> dict[str, Any]:
    """Summarise a run.

    Keys: ``run`` (id, source, status, synthetic, schema_version, description), ``topology``,
    ``parallel``, ``probes`` (name -> available, reason), ``ranks`` (list), ``steps`` (sorted
    distinct step ids), ``time`` (start_ns, end_ns, duration_s), ``spans`` (count per lane and
    kind), ``kernels`` (per lane: count, busy_s, SMs min / median / max and the most frequent
    kernels with their SMs), ``counters`` (count, nodes, devices, metrics), ``segments``
    (files, bytes), ``import_notes`` (rank, note: what ``import`` said about each file, e.g.
    categories it left out).
    """
    m = reader.manifest
    spans = reader.spans(columns=["lane", "kind", "name", "step", "start_ns", "end_ns", "sms",
                                  "stream"])  # only what the summary reads
    counters = reader.counters()
    info: dict[str, Any] = {
        "run": {
            "path": str(reader.path),
            "run_id": m.run_id,
            "source": m.source,
            "status": m.status,
            "synthetic": m.synthetic,
            "schema_version": m.schema_version,
            "description": m.description,
        },
        "topology": vars(m.topology),
        "parallel": vars(m.parallel),
        "probes": {k: vars(v) for k, v in m.probes.items()},
        "ranks": reader.ranks(),
        "clock_offsets_ns": m.clock_offsets_ns,
    }
    files = m.extra.get("files") if isinstance(m.extra, dict) else None
    info["import_notes"] = [{"rank": f.get("rank"), "note": str(n)}
                            for f in (files if isinstance(files, list) else [])
                            if isinstance(f, dict) for n in (f.get("notes") or [])]
    if len(spans):
        start, end = int(spans["start_ns"].min()), int(spans["end_ns"].max())
        info["time"] = {"start_ns": start, "end_ns": end, "duration_s": (end - start) / 1e9}
        info["steps"] = sorted(int(s) for s in spans["step"].dropna().unique())
    else:
        info["time"] = {"start_ns": None, "end_ns": None, "duration_s": 0.0}
        info["steps"] = []
    info["spans"] = {
        "count": int(len(spans)),
        "by_lane": {str(k): int(v) for k, v in spans.groupby("lane").size().items()},
        "by_kind": {str(k): int(v) for k, v in spans.groupby("kind").size().items()},
    }
    info["kernels"] = _kernel_summary(spans, top_kernels)
    info["counters"] = {
        "count": int(len(counters)),
        "nodes": sorted(counters["node"].unique().tolist()) if len(counters) else [],
        "devices": sorted(counters["device"].unique().tolist()) if len(counters) else [],
        "metrics": sorted(counters["metric"].unique().tolist()) if len(counters) else [],
    }
    info["train"] = _train_metrics(counters)
    files = reader.segment_files()
    info["segments"] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return info


def _kernel_summary(spans: pd.DataFrame, top: int) -> dict[str, Any]:
    k = spans[spans["kind"] == "kernel"]
    out: dict[str, Any] = {}
    for lane, g in k.groupby("lane"):
        sms = g["sms"].dropna().astype("int64")
        dur_s = (g["end_ns"] - g["start_ns"]).sum() / 1e9
        by_name = (
            g.assign(sms=g["sms"].astype("Float64"), busy_s=(g["end_ns"] - g["start_ns"]) / 1e9)
            .groupby("name")
            .agg(count=("name", "size"), sms=("sms", "median"), busy_s=("busy_s", "sum"))
            .sort_values("busy_s", ascending=False)
            .head(top)
        )
        out[str(lane)] = {
            "count": int(len(g)),
            "busy_s": float(dur_s),
            "sms_min": int(sms.min()) if len(sms) else None,
            "sms_median": float(sms.median()) if len(sms) else None,
            "sms_max": int(sms.max()) if len(sms) else None,
            "streams": sorted(int(s) for s in g["stream"].dropna().unique()),
            "top": [
                {"name": str(n), "count": int(r["count"]),
                 "sms": None if pd.isna(r["sms"]) else float(r["sms"]),
                 "busy_s": float(r["busy_s"])}
                for n, r in by_name.iterrows()
            ],
        }
    return out


def _train_metrics(counters: pd.DataFrame) -> dict[str, Any]:
    """Per-step metrics of a run that writes them (the reference run): device ``train``,
    metrics ``step`` / ``loss`` / ``step_time_s`` stamped with the same (node, ts_ns).
    Keys: ``loss`` (list of {step, loss} by step; empty when absent), ``step_time_s_median``."""
    out: dict[str, Any] = {"loss": [], "step_time_s_median": None}
    c = counters[counters["device"] == "train"] if len(counters) else counters
    if not len(c):
        return out
    key = ["node", "ts_ns"]
    steps = c.loc[c["metric"] == "step", [*key, "value"]].rename(columns={"value": "step"})
    loss = c.loc[c["metric"] == "loss", [*key, "value"]].merge(steps, on=key).sort_values("step")
    out["loss"] = [{"step": int(s), "loss": float(v)}
                   for s, v in zip(loss["step"], loss["value"], strict=True)]
    st = c.loc[c["metric"] == "step_time_s", "value"]
    out["step_time_s_median"] = float(st.median()) if len(st) else None
    return out
