from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from profiler.errors import InputError, RunFormatError
from profiler.manifest import Manifest, Topology
from profiler.schema import SPAN_SCHEMA, spans_table
from profiler.store import RunReader, RunWriter, StreamWriter, atomic_run_dir, compact

ROOT = Path(__file__).resolve().parent.parent


def _spans(rank: int, n: int, t0: int = 0, **extra: list) -> dict:
    d = {
        "rank": [rank] * n, "lane": ["compute"] * n, "kind": ["model"] * n,
        "name": ["x"] * n, "start_ns": list(range(t0, t0 + n)),
        "end_ns": list(range(t0 + 1, t0 + n + 1)),
    }
    d.update(extra)
    return d


def _writer_proc(run: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.store_writer", str(run), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )


def test_roundtrip_filters_and_types(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunWriter(run, Manifest(source="synthetic", topology=Topology(sms_per_gpu=132))) as w:
        w.write_spans(_spans(0, 10, sms=[20] * 10))
        w.write_spans(_spans(1, 5, t0=100))
        w.counters("node-a").write({"ts_ns": [1, 2], "node": ["node-a"] * 2, "gpu": [0, None],
                                    "device": ["nvlink", "ib:mlx5_0:1"],
                                    "metric": ["tx_bytes_per_s"] * 2, "value": [1.5, float("nan")]})
    r = RunReader(run)
    assert r.manifest.status == "finished"
    assert r.manifest.topology.sms_per_gpu == 132
    assert r.ranks() == [0, 1]
    df = r.spans()
    assert len(df) == 15
    assert df["start_ns"].dtype == "int64"
    assert str(df["sms"].dtype) == "Int32"  # nullable integer, never float
    assert df.loc[df["rank"] == 1, "sms"].isna().all()
    assert len(r.spans(ranks=[1])) == 5
    # window keeps overlapping spans: [3, 6) overlaps spans starting at 2..5
    win = r.spans(ranks=[0], start_ns=3, end_ns=6)
    assert sorted(win["start_ns"]) == [2, 3, 4, 5]
    c = r.counters()
    assert len(c) == 2 and c["gpu"].isna().sum() == 1 and c["value"].isna().sum() == 1


def test_rotation_seals_segments_and_reader_caches(tmp_path: Path) -> None:
    w = StreamWriter(tmp_path / "s", SPAN_SCHEMA, rotate_s=1e-6, flush_s=0)
    for i in range(3):
        w.write(_spans(0, 4, t0=10 * i))
    w.close()
    names = sorted(n for n in os.listdir(tmp_path / "s") if not n.endswith(".crc"))
    assert names == ["seg-000000.arrows", "seg-000001.arrows", "seg-000002.arrows"]
    # every segment has its checksum sidecar (docs/trace-format.md)
    assert sorted(n for n in os.listdir(tmp_path / "s") if n.endswith(".crc")) == [
        "seg-000000.crc", "seg-000001.crc", "seg-000002.crc"]


def test_schema_refuses_unknown_and_missing_columns() -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        spans_table({**_spans(0, 1), "bogus": [1]})
    d = _spans(0, 1)
    del d["start_ns"]
    with pytest.raises(ValueError, match="start_ns"):
        spans_table(d)


def test_sigkill_loses_at_most_last_unflushed_batch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _writer_proc(run, "2", "0", "50", "0.01")
    assert proc.stdout is not None
    flushed = 0
    deadline = time.monotonic() + 30
    while flushed < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("flushed"):
            flushed = int(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert flushed >= 40
    r = RunReader(run)
    assert r.manifest.status == "live"  # never closed: the reader must still open it
    df = r.spans()
    per_rank = df.groupby("rank").size()
    # every batch reported as flushed survived; at most the one after it (flushed between the
    # report and the kill) adds 50 more; the unflushed "pending" rows never appear
    for rank in (0, 1):
        assert flushed * 50 <= per_rank[rank] <= (flushed + 1) * 50
    assert "pending" not in set(df["name"]) and 99 not in set(df["rank"])
    files = os.listdir(run / "spans" / "rank-00000")
    assert any(f.endswith(".arrows") for f in files)  # rotation sealed some segments


def test_truncated_open_segment_is_read_up_to_last_complete_batch(tmp_path: Path) -> None:
    w = StreamWriter(tmp_path / "s", SPAN_SCHEMA, rotate_s=3600, flush_s=0)
    w.write(_spans(0, 3))
    w.write(_spans(0, 3, t0=3))
    open_seg = tmp_path / "s" / "seg-000000.arrows.open"
    size = open_seg.stat().st_size
    data = open_seg.read_bytes()
    # simulate a crash mid-write: chop the last batch in half
    (tmp_path / "s" / "seg-000001.arrows.open").write_bytes(data[: size - 40])
    r = RunReader.__new__(RunReader)
    r._cache, r.on_damage, r.notes = {}, "error", []
    t = r._read_stream_dir(tmp_path / "s", SPAN_SCHEMA)
    assert t is not None and t.num_rows == 6 + 3


def test_reader_polls_while_writer_appends(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _writer_proc(run, "1", "60", "20", "0.02")
    seen = []
    try:
        deadline = time.monotonic() + 30
        while not (run / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        reader = RunReader(run)
        while proc.poll() is None and time.monotonic() < deadline:
            seen.append(len(reader.spans()))  # must never raise
            time.sleep(0.005)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert seen == sorted(seen), "a poll saw fewer rows than an earlier one"
    assert len(set(seen)) > 3, "the reader never saw the run grow"
    final = RunReader(run).spans()
    assert len(final) == 60 * 20 + 60  # + the 'pending' row of each batch, flushed on close


def test_compaction_to_parquet_is_transparent(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w = RunWriter(run, Manifest(source="synthetic"), rotate_s=1e-6, flush_s=0)
    for i in range(4):
        w.write_spans(_spans(0, 5, t0=10 * i))
    before = RunReader(run).spans()
    parts = compact(run)
    assert len(parts) == 1 and parts[0].suffix == ".parquet"
    w.write_spans(_spans(0, 5, t0=100))  # keeps appending after compaction
    w.close()
    after = RunReader(run).spans()
    pd.testing.assert_frame_equal(after.iloc[: len(before)].reset_index(drop=True),
                                  before.reset_index(drop=True))
    assert len(after) == len(before) + 5


def test_atomic_run_dir_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_run_dir(target) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    target.mkdir()
    with pytest.raises(InputError, match="already exists"), atomic_run_dir(target):
        pass


def test_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RunFormatError, match="no such run directory"):
        RunReader(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFormatError, match="no manifest.json"):
        RunReader(tmp_path / "empty")
    bad = tmp_path / "newer"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"schema_version": 99, "source": "import"}))
    with pytest.raises(RunFormatError, match="newer"):
        RunReader(bad)


def test_sealed_segment_damage_is_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunWriter(run, Manifest(source="synthetic")) as w:
        w.write_spans(_spans(0, 100))
    seg = run / "spans" / "rank-00000" / "seg-000000.arrows"
    seg.write_bytes(seg.read_bytes()[:-30])
    with pytest.raises(RunFormatError, match="truncated"):
        RunReader(run).spans()


def test_schema_metadata_carries_version() -> None:
    assert SPAN_SCHEMA.metadata[b"dualscope_schema_version"] == b"1"
    assert isinstance(SPAN_SCHEMA.field("start_ns").type, pa.DataType)


def test_two_writers_of_one_run_keep_each_others_manifest_keys(tmp_path: Path) -> None:
    from profiler.manifest import ProbeStatus

    run = tmp_path / "run"
    job = RunWriter(run, Manifest(source="reference"))
    agent = RunWriter(run, Manifest(source="probe"))
    agent.manifest.probes["nvml@node0"] = ProbeStatus(False, "NVMLError_LibraryNotFound")
    agent.manifest.extra["probe"] = {"interval_s": 0.1}
    agent.close()
    job.manifest.extra["steps"] = 3
    job.close()
    m = Manifest.read(run)
    assert m.probes["nvml@node0"].reason == "NVMLError_LibraryNotFound"
    assert m.extra == {"probe": {"interval_s": 0.1}, "steps": 3}
