"""Store integrity (issue 12, item 1): every flush of a segment and every Parquet part is
covered by a checksum that is checked before the bytes are parsed. A flipped bit gives a
one-line error naming the file and batch (or, under ``skip``, drops that batch with a note);
never a crash, never silently different data. ``dualscope verify`` finds every flip."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from profiler.errors import RunFormatError
from profiler.manifest import Manifest
from profiler.schema import COUNTER_SCHEMA
from profiler.store import RunReader, RunWriter, StreamWriter, compact
from profiler.store.verify import verify_run


def _spans(rank: int, n: int, t0: int) -> dict:
    return {"rank": [rank] * n, "lane": ["compute"] * n, "kind": ["model"] * n,
            "name": [f"op{i % 7}" for i in range(n)], "start_ns": list(range(t0, t0 + n)),
            "end_ns": list(range(t0 + 1, t0 + n + 1)), "step": [t0 // 100] * n}


def _run(path: Path, batches: int = 6, rotate_every: int = 2) -> pd.DataFrame:
    """A finished run of 2 ranks: several sealed segments of several batches each."""
    with RunWriter(path, Manifest(source="synthetic", synthetic=True), rotate_s=3600,
                   flush_s=0) as w:
        for b in range(batches):
            for r in (0, 1):
                w.spans(r).write(_spans(r, 50, t0=100 * b))
            if b % rotate_every == rotate_every - 1:
                for r in (0, 1):
                    w.spans(r).rotate()
    return RunReader(path).spans()


def _data_files(run: Path) -> list[Path]:
    return sorted(p for p in (run / "spans").rglob("*")
                  if p.is_file() and not p.name.endswith(".crc"))


def _flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return i


def test_every_segment_has_a_checksum_and_reads_back(tmp_path: Path) -> None:
    before = _run(tmp_path / "run")
    assert len(before) == 2 * 6 * 50
    assert all(f.status == "ok" for f in verify_run(tmp_path / "run"))


@pytest.mark.parametrize("compacted", [False, True], ids=["segments", "parquet"])
def test_single_bit_flips_are_caught_before_parsing(tmp_path: Path, compacted: bool) -> None:
    """≥ 100 flips per layout (200 in all): each gives a one-line error naming the flipped
    file, or — never — different data."""
    base = tmp_path / "base"
    original = _run(base)
    if compacted:
        compact(base)
        original = RunReader(base).spans()
    rng = random.Random(1234 + compacted)
    files = _data_files(base)
    caught = 0
    for case in range(100):
        work = tmp_path / f"c{case}"
        shutil.copytree(base, work)
        victim = work / rng.choice(files).relative_to(base)
        _flip(victim, rng)
        try:
            got = RunReader(work).spans()
        except RunFormatError as e:
            msg = str(e)
            assert "\n" not in msg and victim.name in msg, msg
            caught += 1
        else:  # only acceptable if nothing changed
            pd.testing.assert_frame_equal(got, original)
        shutil.rmtree(work)
    assert caught == 100  # every byte is covered by a checksum


def test_flipped_checksum_file_is_damage_not_a_crash(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run)
    side = sorted((run / "spans" / "rank-00000").glob("*.crc"))[0]
    _flip(side, random.Random(3))
    with pytest.raises(RunFormatError, match=r"seg-000000"):
        RunReader(run).spans()


def test_skip_policy_drops_only_the_damaged_batch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    original = _run(run, batches=4, rotate_every=4)  # one sealed segment of 4 batches/rank
    seg = run / "spans" / "rank-00001" / "seg-000000.arrows"
    data = bytearray(seg.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10  # inside the third or fourth batch, not the schema
    seg.write_bytes(bytes(data))
    with pytest.raises(RunFormatError, match=r"seg-000000.arrows: checksum mismatch in batch"):
        RunReader(run).spans()
    r = RunReader(run, on_damage="skip")
    got = r.spans()
    assert len(got) == len(original) - 50  # one batch of rank 1 dropped, nothing else
    assert got.loc[got["rank"] == 0].reset_index(drop=True).equals(
        original.loc[original["rank"] == 0].reset_index(drop=True))
    assert any("checksum mismatch in batch" in n and n.endswith("(skipped)") for n in r.notes)


def test_open_segment_reads_checked_prefix_while_writer_is_attached(tmp_path: Path) -> None:
    w = StreamWriter(tmp_path / "s", COUNTER_SCHEMA, rotate_s=3600, flush_s=0)
    for i in range(3):
        w.write({"ts_ns": [i], "node": ["n"], "gpu": [0], "device": ["sm"],
                 "metric": ["comm_sms"], "value": [float(i)]})
    assert (tmp_path / "s" / "seg-000000.arrows.open").is_file()
    assert (tmp_path / "s" / "seg-000000.crc").stat().st_size == 3 * 16
    w.close()
    assert not (tmp_path / "s" / "seg-000000.arrows.open").exists()
    assert (tmp_path / "s" / "seg-000000.crc").stat().st_size == 4 * 16  # + end marker


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink-loop", "counters-in-spans"])
def test_odd_entries_are_named_never_opened(tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    _run(run, batches=2)
    stream = run / "spans" / "rank-00000"
    odd = stream / "seg-000007.arrows"
    if kind == "fifo":
        os.mkfifo(odd)  # opening it would block the reader forever
        why = "FIFO"
    elif kind == "directory":
        odd.mkdir()
        why = "a directory"
    elif kind == "symlink-loop":
        (stream / "loop").symlink_to(odd)
        odd.symlink_to(stream / "loop")
        why = "symlink loop"
    else:
        other = tmp_path / "c"
        w = StreamWriter(other, COUNTER_SCHEMA, rotate_s=3600, flush_s=0)
        w.write({"ts_ns": [1], "node": ["n"], "gpu": [0], "device": ["sm"],
                 "metric": ["comm_sms"], "value": [1.0]})
        w.close()
        shutil.copy(other / "seg-000000.arrows", odd)
        shutil.copy(other / "seg-000000.crc", stream / "seg-000007.crc")
        why = "not a spans stream"
    with pytest.raises(RunFormatError, match=why):
        RunReader(run).spans()
    r = RunReader(run, on_damage="skip")
    assert len(r.spans()) == 2 * 2 * 50 and any(why in n for n in r.notes)
    bad = [f for f in verify_run(run) if f.status == "damaged"]
    assert [f.path for f in bad] == ["spans/rank-00000/seg-000007.arrows"]


def test_segment_without_checksum_reads_with_a_note(tmp_path: Path) -> None:
    run = tmp_path / "run"
    original = _run(run, batches=2)
    for side in (run / "spans").rglob("*.crc"):
        side.unlink()
    r = RunReader(run)
    pd.testing.assert_frame_equal(r.spans(), original)
    assert any("no checksums" in n for n in r.notes)
    assert {f.status for f in verify_run(run)} == {"ok", "unchecked"}


def test_verify_cli_finds_every_flipped_file(tmp_path: Path, python: str,
                                             cli_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    _run(run)
    compact(run)
    _run(tmp_path / "more")  # an undamaged run of sealed segments
    rng = random.Random(7)
    files = _data_files(run)
    flipped = {str(p.relative_to(run)) for p in rng.sample(files, 2)}
    for rel in flipped:
        _flip(run / rel, rng)
    r = subprocess.run([python, "-m", "dualscope", "verify", str(run), "--json"],
                       capture_output=True, text=True, env=cli_env, timeout=120)
    assert r.returncode == 1, r.stderr
    import json

    out = json.loads(r.stdout)
    assert {f["path"] for f in out["files"] if f["status"] == "damaged"} == flipped
    good = subprocess.run([python, "-m", "dualscope", "verify", str(tmp_path / "more")],
                          capture_output=True, text=True, env=cli_env, timeout=120)
    assert good.returncode == 0 and "0 damaged" in good.stdout


def test_verify_checks_step_results_state_and_heartbeats(tmp_path: Path) -> None:
    """Derived step results are segments like any other; the engine's state and the writers'
    heartbeats are JSON side files: each damaged one is named."""
    import json
    import shutil

    from profiler.steps.engine import StepEngine

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[1] / "sample_traces"
                    / "reference-cpu-pp2-ep2-dualpipev", run)
    with StepEngine(run, ideal_every=0) as engine:
        engine.run()
    (run / "heartbeat").mkdir()
    (run / "heartbeat" / "rank-00000.json").write_text(json.dumps({"pid": 1}))
    found = verify_run(run)
    paths = {f.path: f.status for f in found}
    derived = [p for p in paths if p.startswith("derived/steps/") and "seg-" in p]
    assert derived and all(paths[p] == "ok" for p in derived)
    assert paths["derived/steps/state.json"] == "ok"
    assert paths["heartbeat/rank-00000.json"] == "ok"
    victim = run / derived[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    (run / "heartbeat" / "rank-00000.json").write_text("{not json")
    bad = {f.path for f in verify_run(run) if f.status == "damaged"}
    assert bad == {derived[0], "heartbeat/rank-00000.json"}
