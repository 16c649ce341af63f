"""The seeded fault suite (issue 12, item 7), through the command line.

Every case runs one ``dualscope`` command in its own process with a timeout and passes only
with: exit status 0 or 2 (``verify``: 1 when it found damage), no ``Traceback``, no death by
a signal, no hang, nothing left behind (see ``tests/helpers/faults.py``). On top of that:

- **bit flips** (220, seeded: 100 over sealed segments, 100 over Parquet parts, 20 in their
  checksum sidecars): the command (``info`` / ``analyze`` / ``export``, in turn) gives a
  one-line error naming the flipped file, or exactly the output of the undamaged run;
  ``verify`` finds every flipped file;
- **manifest type swaps** (60, a seeded sample of ~140): ``info`` / ``analyze`` / ``export`` /
  ``compare`` / ``verify`` refuse on one line naming ``manifest.json`` (and the field);
- **I/O errors** on ``export``, ``model --out``, ``compact``, ``verify --add-checksums`` and
  ``probe --out``: read-only file system and no space left (small tmpfs mounts, skipped
  with the reason where mounting is not allowed), file too large (``RLIMIT_FSIZE``, runs
  everywhere), not a directory, a dangling symlink, a FIFO: one line naming the path and the
  reason, exit 2;
- **signals**: SIGTERM, SIGHUP and SIGINT in the middle of an export and of an import leave
  no ``.<out>.*.tmp`` and no half-written output (exit 128 + signal).

Flips and swaps run in two fork servers (one import, a forked child per case: still one
process per case) to stay within the time budget on two cores; a few cases are repeated in a
fresh ``python -m dualscope`` to show both ways agree.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.faults import (
    Case,
    ForkServer,
    cli_env,
    flip_bit,
    flip_problems,
    left_behind,
    listing,
    problems,
    restored,
    run_cli,
)

from profiler.manifest import Manifest
from profiler.store import RunReader, RunWriter

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "sample_traces" / "reference-cpu-pp2-ep2-dualpipev"
LARGE = ROOT / "sample_traces" / "synthetic-dsv3-pp16-ep64"
SEED = 20_251_203
FLIPS_PER_LAYOUT = 100
SIDECAR_FLIPS_PER_LAYOUT = 10  # on top: flips in the checksum files themselves
SWAPS = 60
WORKERS = 2

pytestmark = pytest.mark.timeout(240)


# -- the runs that get damaged -------------------------------------------------------------------
def _segmented_copy(src: Path, dst: Path) -> None:
    """``src`` rewritten as sealed segments: per stream 3 segments of 2 batches each (the
    reference sample holds Parquet parts only)."""
    reader = RunReader(src)
    with RunWriter(dst, Manifest.read(src), rotate_s=3600, flush_s=3600,
                   batch_rows=1 << 30) as w:
        for rank in reader.ranks():
            _write_in_pieces(w.spans(rank), reader.span_table([rank]))
        for node in reader.nodes():
            _write_in_pieces(w.counters(node), reader.counter_table([node]))


def _write_in_pieces(stream, table, pieces: int = 6, per_segment: int = 2) -> None:
    step = -(-table.num_rows // pieces)
    for i in range(pieces):
        stream.write(table.slice(i * step, step))
        stream.flush()
        if i % per_segment == per_segment - 1:
            stream.rotate()


def _data_file_of(run: Path, rel: str) -> str:
    """The data file a checksum sidecar belongs to (``rel`` itself for a data file)."""
    if not rel.endswith(".crc"):
        return rel
    if rel.endswith(".parquet.crc"):
        return rel[: -len(".crc")]
    stem = (run / rel).name[: -len(".crc")]
    names = [p.name for p in (run / rel).parent.iterdir() if p.name.startswith(stem + ".arrows")]
    assert len(names) == 1, names
    return str(Path(rel).parent / names[0])


def _data_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if p.is_file() and (p.suffix in (".arrows", ".parquet")))


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    shutil.copytree(REFERENCE, root / "parts")
    _segmented_copy(REFERENCE, root / "segs")
    return {"parts": root / "parts", "segs": root / "segs"}


def _workdirs(bases: dict[str, Path], root: Path) -> list[Path]:
    """One copy of every base per worker: a worker flips and restores files in place."""
    dirs = []
    for w in range(WORKERS):
        d = root / f"w{w}"
        for name, src in bases.items():
            shutil.copytree(src, d / name)
        dirs.append(d)
    return dirs


def _in_workers(cases: list, fn) -> list:
    """Run ``fn(server, workdir_index, case)`` over ``cases`` split across the fork servers."""
    servers = [ForkServer() for _ in range(WORKERS)]
    try:
        def share(w: int) -> list:
            return [fn(servers[w], w, c) for c in cases[w::WORKERS]]

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(share, range(WORKERS)))
    finally:
        for s in servers:
            s.close()
    return [r for rs in results for r in rs]


# -- single-bit flips -------------------------------------------------------------------------------
COMMANDS = ("info", "analyze", "export")


def _argv(command: str, run: str) -> tuple[str, ...]:
    if command == "export":
        return ("export", run, "--out", "out.json")
    return (command, run, "--json")


def test_single_bit_flips_through_the_cli(bases: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    plan = []  # (layout, file, byte seed, command)
    for layout in ("segs", "parts"):
        files = _data_files(bases[layout])
        assert len(files) >= 8, files
        for i in range(FLIPS_PER_LAYOUT):
            plan.append((layout, rng.choice(files), rng.randrange(2**32), COMMANDS[i % 3]))
        sidecars = sorted(str(p.relative_to(bases[layout]))
                          for p in bases[layout].rglob("*.crc"))
        for i in range(SIDECAR_FLIPS_PER_LAYOUT):
            plan.append((layout, rng.choice(sidecars), rng.randrange(2**32), COMMANDS[i % 3]))
    work = _workdirs(bases, tmp_path)

    # what the undamaged runs give, per worker (paths in the output are the worker's)
    originals: dict[tuple[int, str, str], str | bytes] = {}
    verdicts: dict[str, int] = {}  # how the flips came out (-s prints it)

    def original(server: ForkServer, w: int, key: tuple[str, str]) -> None:
        layout, command = key
        o = server.run(Case(f"original {layout} {command}", _argv(command, layout),
                            cwd=str(work[w]), watch=(str(work[w]),),
                            outputs=(str(work[w] / "out.json"),)))
        assert o.rc == 0 and not problems(o), (o.stderr, problems(o))
        got: str | bytes = o.stdout
        if command == "export":
            got = (work[w] / "out.json").read_bytes()
            (work[w] / "out.json").unlink()
        originals[(w, layout, command)] = got

    def flip(server: ForkServer, w: int, item: tuple[str, str, int, str]) -> list[str]:
        layout, rel, seed, command = item
        if not originals.get((w, layout, command)):
            original(server, w, (layout, command))
        run = work[w] / layout
        victim = run / rel
        out = work[w] / "out.json"
        watch = (str(work[w]),)
        with restored(victim):
            at = flip_bit(victim, random.Random(seed))
            what = f"{layout}/{rel} bit {at} {command}"
            o = server.run(Case(what, _argv(command, layout), cwd=str(work[w]), watch=watch,
                                outputs=(str(out),)))
            got = out.read_bytes() if command == "export" and o.rc == 0 else None
            bad = problems(o) + flip_problems(o, flipped=rel, original=originals[
                (w, layout, command)], got=got)
            verdicts[f"{layout} rc {o.rc}"] = verdicts.get(f"{layout} rc {o.rc}", 0) + 1
            v = server.run(Case(what + " verify", ("verify", layout, "--json"),
                                cwd=str(work[w]), watch=watch, ok_rc=frozenset({1})))
            bad += problems(v)
            if v.rc == 1:
                found = {f["path"]: f["status"] for f in json.loads(v.stdout)["files"]}
                data = _data_file_of(run, rel)  # verify lists a sidecar's damage there
                if found.get(data) != "damaged":
                    bad.append(f"verify did not find the flip (it says {found.get(data)})")
            out.unlink(missing_ok=True)
        return [f"{what}: {b}" for b in bad]

    t0 = time.perf_counter()
    failures = [b for bs in _in_workers(plan, flip) for b in bs]
    assert failures == [], "\n".join(failures[:40])
    assert len(plan) == 2 * (FLIPS_PER_LAYOUT + SIDECAR_FLIPS_PER_LAYOUT)
    print(f"{len(plan)} flips in {time.perf_counter() - t0:.1f} s: {sorted(verdicts.items())}")


def test_flips_give_the_same_verdict_in_a_fresh_interpreter(bases: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """The fork server is faithful: a few flips run both ways give the same status and
    stderr (what the suite judges)."""
    rng = random.Random(SEED + 1)
    run = tmp_path / "segs"
    shutil.copytree(bases["segs"], run)
    files = _data_files(run)
    with ForkServer() as server:
        for _ in range(4):
            rel = rng.choice(files)
            with restored(run / rel):
                flip_bit(run / rel, rng)
                case = Case(f"fresh {rel}", ("info", "segs", "--json"), cwd=str(tmp_path),
                            watch=(str(run),))
                a, b = server.run(case), run_cli(case)
                assert (a.rc, a.signal, a.stderr) == (b.rc, b.signal, b.stderr), (a, b)
                assert not problems(b), problems(b)


# -- manifest type swaps ----------------------------------------------------------------------------
#: values of the wrong type for a field of each type (None only where the field needs a value)
_WRONG = {
    "int": ["7", [], {}, 1.5, True, 2**70],
    "int?": ["7", [1], {"a": 1}, 2.5, False],
    "str": [1, [], {}, True, None],
    "str?": [1, ["x"], {}, True],
    "bool": ["yes", 1, [], None],
    "float?": ["fast", [], {}, True],
    "object": [[], "x", 1, True],
}
_FIELDS = {
    ("schema_version",): "int", ("created_unix_ns",): "int", ("run_id",): "str",
    ("source",): "str", ("status",): "str", ("description",): "str", ("synthetic",): "bool",
    ("clock_offsets_applied",): "bool", ("topology",): "object", ("parallel",): "object",
    ("probes",): "object", ("clock_offsets_ns",): "object", ("extra",): "object",
    ("topology", "nodes"): "int?", ("topology", "gpus_per_node"): "int?",
    ("topology", "sms_per_gpu"): "int?", ("topology", "gpu_name"): "str?",
    ("topology", "nvlink_peak_bytes_per_s"): "float?", ("parallel", "pp"): "int?",
    ("parallel", "ep"): "int?", ("parallel", "dp"): "int?", ("parallel", "world_size"): "int?",
    ("parallel", "microbatches"): "int?", ("parallel", "schedule"): "str?",
    ("probes", "timers"): "object", ("probes", "timers", "available"): "bool",
    ("probes", "timers", "reason"): "str", ("clock_offsets_ns", "1"): "int",
}
_WHOLE = [b"[]", b"null", b'"a run"', b"1", b"\xff\xfe{}", b'{"schema_version": 1, "sou',
          b"[" * 100_000 + b"]" * 100_000, b""]
SWAP_COMMANDS = ("info", "analyze", "export", "compare", "verify")


def _swaps() -> list[tuple[str, tuple[str, ...], object]]:
    out: list[tuple[str, tuple[str, ...], object]] = []
    for path, kind in _FIELDS.items():
        for value in _WRONG[kind]:
            out.append(("field", path, value))
    out += [("whole", (), doc) for doc in _WHOLE]
    return out


def _swapped(doc: dict, path: tuple[str, ...], value: object) -> dict:
    d = json.loads(json.dumps(doc))
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return d


def _names_field(line: str, path: tuple[str, ...]) -> bool:
    """The error names the field; an entry of a map (``probes.timers``) is named by its map
    (msgspec says ``$.probes[...]``: the key itself is not in the message)."""
    if path[-1] in line:
        return True
    return len(path) >= 2 and f"$.{path[-2]}[...]" in line


def test_manifest_type_swaps_through_the_cli(bases: dict[str, Path], tmp_path: Path) -> None:
    swaps = _swaps()
    assert len(swaps) >= 2 * SWAPS
    rng = random.Random(SEED + 2)
    whole = [s for s in swaps if s[0] == "whole"]
    chosen = whole + rng.sample([s for s in swaps if s[0] == "field"], SWAPS - len(whole))
    work = _workdirs({"parts": bases["parts"]}, tmp_path)
    doc = json.loads((bases["parts"] / "manifest.json").read_text())

    def swap(server: ForkServer, w: int, item: tuple[int, tuple]) -> list[str]:
        i, (kind, path, value) = item
        command = SWAP_COMMANDS[i % len(SWAP_COMMANDS)]
        run = work[w] / "parts"
        target = run / "manifest.json"
        what = f"{command} with {'.'.join(path) or 'the whole manifest'} = {str(value)[:30]}"
        with restored(target):
            target.write_bytes(value if kind == "whole" else  # type: ignore[arg-type]
                               json.dumps(_swapped(doc, path, value)).encode())
            argv = (("verify", "parts", "--json") if command == "verify" else
                    ("compare", "parts") if command == "compare" else _argv(command, "parts"))
            o = server.run(Case(what, argv, cwd=str(work[w]), watch=(str(work[w]),),
                                ok_rc=frozenset({1} if command == "verify" else {2})))
            (work[w] / "out.json").unlink(missing_ok=True)
        bad = problems(o)
        if command == "verify":
            if o.rc == 1:
                found = {f["path"]: f for f in json.loads(o.stdout)["files"]}
                if found["manifest.json"]["status"] != "damaged":
                    bad.append("verify did not flag manifest.json")
        else:
            lines = o.stderr.strip().splitlines()
            if len(lines) != 1 or "manifest.json" not in lines[0]:
                bad.append(f"not one line naming manifest.json: {o.stderr[-300:]!r}")
            elif kind == "field" and not _names_field(lines[0], path):
                bad.append(f"does not name the field {'.'.join(path)!r}: {lines[0]!r}")
        return [f"{what}: {b}" for b in bad]

    failures = [b for bs in _in_workers(list(enumerate(chosen)), swap) for b in bs]
    assert failures == [], "\n".join(failures[:40])


# -- I/O errors -------------------------------------------------------------------------------------
class _Mount:
    """A small tmpfs, mounted for a test (root with CAP_SYS_ADMIN only)."""

    def __init__(self, where: Path, size: str) -> None:
        self.path = where
        where.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                                "tmpfs", str(where)], capture_output=True, text=True)
            why = r.stderr.strip() or f"exit {r.returncode}"
        except OSError as e:  # no mount(8) at all
            r, why = None, str(e)
        if r is None or r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({why}): the "
                        "read-only and full-disk cases need one; the file-size, not-a-"
                        "directory and symlink cases still ran")

    def fill(self, leave_bytes: int = 0) -> None:
        """Fill the file system, leaving about ``leave_bytes`` free."""
        fd = os.open(self.path / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        if leave_bytes:
            size = (self.path / ".filler").stat().st_size
            os.truncate(self.path / ".filler", max(0, size - leave_bytes))

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def mounts(tmp_path: Path):
    made: list[_Mount] = []

    def make(name: str, size: str = "1m") -> _Mount:
        m = _Mount(tmp_path / name, size)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def _io_case(argv: tuple[str, ...], watch: tuple[Path, ...], *, path: str, reason: str,
             rlimits: tuple[tuple[int, int], ...] = (), last_line: bool = False) -> list[str]:
    """Run a writing command that must fail on its output: exit 2, one line (the last
    line, for the probe's log) naming ``path`` and ``reason``, nothing left behind."""
    o = run_cli(Case(" ".join(argv), argv, watch=tuple(str(w) for w in watch),
                     ok_rc=frozenset({2}), rlimits=rlimits, timeout_s=60))
    bad = problems(o)
    lines = o.stderr.strip().splitlines()
    line = lines[-1] if lines else ""
    if not last_line and len(lines) != 1:
        bad.append(f"{len(lines)} lines on stderr: {o.stderr[-400:]!r}")
    if not line.startswith("dualscope: error: ") or path not in line or reason not in line:
        bad.append(f"expected one line naming {path!r} and {reason!r}, got {line!r}")
    return [f"{' '.join(argv)}: {b}" for b in bad]


def _no_crc_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for crc in dst.rglob("*.crc"):
        crc.unlink()
    return dst


def _probe(out: Path) -> tuple[str, ...]:
    return ("probe", "--out", str(out), "--duration", "2", "--metrics-port", "-1",
            "--ib-sysfs", "/nonexistent-ib", "--interval", "0.05")


def test_read_only_file_system(bases: dict[str, Path], mounts, tmp_path: Path) -> None:
    ro = mounts("ro", "8m")
    shutil.copytree(bases["segs"], ro.path / "segs")
    _no_crc_copy(bases["segs"], ro.path / "nocrc")
    ro.read_only()
    R = "read-only file system"
    failures = [
        *_io_case(("export", str(REFERENCE), "--out", str(ro.path / "t.json")), (ro.path,),
                  path=str(ro.path / "t.json"), reason=R),
        *_io_case(("model", "--pp", "4", "-m", "8", "--out", str(ro.path / "m")), (ro.path,),
                  path=str(ro.path / "m"), reason=R),
        *_io_case(("compact", str(ro.path / "segs")), (ro.path,),
                  path=str(ro.path / "segs" / "spans"), reason=R),
        *_io_case(("verify", str(ro.path / "nocrc"), "--add-checksums"), (ro.path,),
                  path=str(ro.path / "nocrc"), reason=R),
        *_io_case(_probe(ro.path / "p"), (ro.path,), path=str(ro.path / "p"), reason=R,
                  last_line=True),
    ]
    assert failures == [], "\n".join(failures)


def test_no_space_left(bases: dict[str, Path], mounts) -> None:
    full = mounts("full", "8m")
    shutil.copytree(bases["segs"], full.path / "segs")
    _no_crc_copy(bases["segs"], full.path / "nocrc")
    full.fill(leave_bytes=48 * 1024)  # room for a start, not for the whole output
    N = "no space left on device"
    failures = [
        *_io_case(("export", str(REFERENCE), "--out", str(full.path / "t.json")),
                  (full.path,), path=str(full.path / "t.json"), reason=N),
        *_io_case(("export", str(REFERENCE), "--gzip", "--out", str(full.path / "t.json.gz")),
                  (full.path,), path=str(full.path / "t.json.gz"), reason=N),
        *_io_case(("model", "--pp", "16", "-m", "128", "--out", str(full.path / "m")),
                  (full.path,), path=str(full.path / "m"), reason=N),
    ]
    # nothing left at all: even a 16-byte checksum or a manifest cannot go (compact frees
    # space as it goes: with a little room it may rightly finish)
    full.fill()
    failures += [
        *_io_case(("compact", str(full.path / "segs")), (full.path,),
                  path=str(full.path / "segs" / "spans"), reason=N),
        *_io_case(("verify", str(full.path / "nocrc"), "--add-checksums"), (full.path,),
                  path=str(full.path / "nocrc"), reason=N),
        *_io_case(_probe(full.path / "p"), (full.path,), path=str(full.path / "p"), reason=N,
                  last_line=True),
    ]
    assert failures == [], "\n".join(failures)


def test_file_too_large_runs_everywhere(bases: dict[str, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE: a write past 64 KiB fails with EFBIG, no mount needed."""
    limit = ((resource.RLIMIT_FSIZE, 64 * 1024),)
    shutil.copytree(bases["segs"], tmp_path / "segs")
    F = "file too large"
    failures = [
        *_io_case(("export", str(REFERENCE), "--out", str(tmp_path / "t.json")), (tmp_path,),
                  path=str(tmp_path / "t.json"), reason=F, rlimits=limit),
        *_io_case(("model", "--pp", "16", "-m", "256", "--out", str(tmp_path / "m")),
                  (tmp_path,), path=str(tmp_path / "m"), reason=F,
                  rlimits=((resource.RLIMIT_FSIZE, 8 * 1024),)),  # segments are ~15 kB
        *_io_case(("compact", str(tmp_path / "segs")), (tmp_path,),
                  path=str(tmp_path / "segs" / "spans"), reason=F,
                  rlimits=((resource.RLIMIT_FSIZE, 4 * 1024),)),
    ]
    assert failures == [], "\n".join(failures)
    assert not list((tmp_path / "segs").rglob("*.parquet"))  # nothing was compacted


def test_not_a_directory_dangling_symlink_and_fifo(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a directory")
    os.symlink(tmp_path / "nowhere" / "x", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    f, d = tmp_path / "file", tmp_path / "dangling"
    failures = []
    for argv, path, reason in [
        (("export", str(REFERENCE), "--out", str(f / "t.json")), str(f), "not a directory"),
        (("model", "--pp", "4", "-m", "8", "--out", str(f / "m")), str(f), "not a directory"),
        (_probe(f / "p"), str(f), "not a directory"),
        (("export", str(REFERENCE), "--out", str(d)), str(d), "symlink"),
        (("export", str(REFERENCE), "--out", str(tmp_path / "fifo"), "--force"),
         str(tmp_path / "fifo"), "not a regular file"),
        (("model", "--pp", "4", "-m", "8", "--out", str(d)), str(d), "symlink"),
        (_probe(d), str(d), "symlink"),
        (("verify", str(d)), str(d), "no such run directory"),
        (("compact", str(f)), str(f), "is a file"),
    ]:
        failures += _io_case(argv, (tmp_path,), path=path, reason=reason,
                             last_line=argv[0] == "probe")
    assert failures == [], "\n".join(failures)
    assert d.is_symlink() and not d.exists() and (tmp_path / "fifo").is_fifo()


@pytest.mark.parametrize("command", ["info", "analyze", "export", "compact", "verify"])
def test_manifest_that_is_not_a_file_never_hangs(command: str, tmp_path: Path) -> None:
    """manifest.json as a FIFO (opening it would wait for a writer forever), a directory,
    a symlink loop or a dangling symlink: one line naming it, at once."""
    runs = []
    for kind in ("fifo", "dir", "loop", "dangling"):
        run = tmp_path / kind
        shutil.copytree(REFERENCE, run)
        m = run / "manifest.json"
        m.unlink()
        if kind == "fifo":
            os.mkfifo(m)
        elif kind == "dir":
            m.mkdir()
        elif kind == "loop":
            os.symlink(m, m)
        else:
            os.symlink(run / "gone.json", m)
        runs.append(run)
    with ForkServer() as server:
        for run in runs:
            argv = {"export": ("export", str(run), "--out", str(tmp_path / "t.json")),
                    "info": ("info", str(run)), "analyze": ("analyze", str(run)),
                    "compact": ("compact", str(run)), "verify": ("verify", str(run))}[command]
            o = server.run(Case(f"{command} {run.name}", argv, watch=(str(tmp_path),),
                                timeout_s=20, ok_rc=frozenset({1} if command == "verify"
                                                              else {2})))
            assert not problems(o), (run.name, problems(o), o.stderr)
            if command == "verify":
                assert "manifest.json" in o.stdout and "damaged" in o.stdout
            else:
                line = o.stderr.strip()
                assert "\n" not in line and "manifest.json" in line or run.name == "dangling", \
                    (run.name, o.stderr)
                assert line.startswith("dualscope: error: ") and str(run) in line


# -- signals in the middle of writing -----------------------------------------------------------------
def _big_kineto_trace(path: Path, events: int = 150_000) -> None:
    """One rank's Kineto trace, large enough that importing it takes a while."""
    ev = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 10, "tid": 10,
           "ts": 0, "dur": events * 2.0}]
    for i in range(events):
        ev.append({"ph": "X", "cat": "kernel", "name": f"gemm_{i % 17}", "pid": 0, "tid": 7,
                   "ts": 1.0 + 2 * i, "dur": 1.5,
                   "args": {"device": 0, "stream": 7, "correlation": i, "grid": [132, 1, 1]}})
    path.write_text(json.dumps({"schemaVersion": 1, "distributedInfo": {"rank": 0,
                                "world_size": 1}, "traceEvents": ev}))


def _signal_midway(argv: tuple[str, ...], cwd: Path, sig: signal.Signals, delay_s: float,
                   out: Path) -> list[str]:
    """Start the command, wait until its temporary output appears, wait ``delay_s`` more
    (well inside the command's run time), send ``sig``; then judge: exit 128 + sig (130 for
    SIGINT, which click reports as aborted), no traceback, nothing left behind."""
    before = listing([cwd])
    proc = subprocess.Popen([sys.executable, "-m", "dualscope", *argv], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    started = False
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{out.name}.") for p in cwd.iterdir()):
            started = True
            break
        time.sleep(0.005)
    time.sleep(delay_s)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return [f"{sig.name}: hung after the signal"]
    rc = proc.returncode
    bad = []
    if not started and rc != 0:
        bad.append(f"never started writing (rc {rc}): {err[-300:]!r}")
    if rc != 128 + sig:
        bad.append(f"exit status {rc}, expected {128 + sig}: {err[-300:]!r}")
    if "Traceback" in err:
        bad.append(f"Traceback: {err[-600:]!r}")
    allowed = [str(out)] if rc == 0 else []
    new = left_behind(before, listing([cwd]), allowed)
    if new:
        bad.append(f"left behind: {new}")
    if rc != 0 and out.exists():
        bad.append("a half-written output exists")
    return [f"{' '.join(argv[:1])} {sig.name} after {delay_s:.2f} s: {b}" for b in bad]


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("trace") / "rank0.json"
    _big_kineto_trace(p)
    return p


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: s.name)
def test_signal_mid_export_and_mid_import_leaves_nothing(sig: signal.Signals, tmp_path: Path,
                                                         big_trace: Path) -> None:
    rng = random.Random(SEED + sig)
    out = tmp_path / "trace.json"
    failures = _signal_midway(("export", str(LARGE), "--out", str(out)), tmp_path, sig,
                              rng.uniform(0.05, 1.0), out)
    run = tmp_path / "imported"
    failures += _signal_midway(("import", str(big_trace), "--out", str(run)), tmp_path, sig,
                               rng.uniform(0.0, 0.5), run)
    assert failures == [], "\n".join(failures)


def test_second_signal_does_not_cut_the_cleanup_short(tmp_path: Path) -> None:
    """SIGTERM, SIGHUP, SIGINT and SIGTERM again within a few ms: the first one Python
    handles stops the export (it handles pending signals in number order, so that may be
    SIGHUP); the others do nothing, and the cleanup runs to its end."""
    out = tmp_path / "trace.json"
    proc = subprocess.Popen([sys.executable, "-m", "dualscope", "export", str(LARGE), "--out",
                             str(out)], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            p.name.startswith(".trace.json.") for p in tmp_path.iterdir()):
        time.sleep(0.005)
    time.sleep(0.3)

    def burst() -> None:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            proc.send_signal(s)
            time.sleep(0.001)

    t = threading.Thread(target=burst)
    t.start()
    _, err = proc.communicate(timeout=60)
    t.join()
    assert proc.returncode in (128 + signal.SIGHUP, 130, 128 + signal.SIGTERM), err
    assert "Traceback" not in err and err.strip().splitlines()[-1] in (
        "dualscope: stopped by SIGTERM", "dualscope: stopped by SIGHUP", "dualscope: aborted")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- the cleanup paths, in process (fast; what the CLI cases above rely on) -------------------------
def test_atomic_run_dir_names_the_output_and_passes_input_errors_through(tmp_path: Path) -> None:
    from profiler.errors import InputError
    from profiler.store import atomic_run_dir

    target = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{target}: cannot write \(no space left on device\)"), \
            atomic_run_dir(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    inp = tmp_path / "input.json"
    with pytest.raises(OSError) as got, atomic_run_dir(target):
        raise OSError(errno.EIO, "Input/output error", str(inp))  # reading an input
    assert not isinstance(got.value, InputError) and got.value.filename == str(inp)
    with pytest.raises(KeyboardInterrupt), atomic_run_dir(target) as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("where", ["write_table", "checksum", "replace"])
def test_compact_interrupted_or_failing_leaves_the_stream_as_it_was(
        bases: dict[str, Path], tmp_path: Path, monkeypatch, where: str) -> None:
    from profiler.errors import InputError
    from profiler.store import compact as compact_mod

    run = tmp_path / "segs"
    shutil.copytree(bases["segs"], run)
    before = listing([run])
    import pyarrow.parquet as pq  # the compaction imports it where it writes a part

    mod = sys.modules["profiler.store.compact"]
    real = {"write_table": pq.write_table, "checksum": mod.write_file_checksum,
            "replace": os.replace}
    n = {"calls": 0}

    def failing(*a, **kw):
        n["calls"] += 1
        real[where](*a, **kw)  # the file is (partly) there ...
        # ... in the second stream, after the first one was compacted (os.replace: the
        # checksum's and the part's, per stream)
        if n["calls"] == (4 if where == "replace" else 2):
            raise (KeyboardInterrupt() if where == "replace" else
                   OSError(errno.ENOSPC, "No space left on device"))

    if where == "write_table":
        monkeypatch.setattr(pq, "write_table", failing)
    elif where == "checksum":
        monkeypatch.setattr(mod, "write_file_checksum", failing)
    else:
        monkeypatch.setattr(mod.os, "replace", failing)
    with pytest.raises(KeyboardInterrupt if where == "replace" else InputError):
        compact_mod(run)
    monkeypatch.undo()
    first = sorted(p for p in listing([run]) - before)  # the first stream's finished part only
    assert all(p.endswith((".parquet", ".parquet.crc")) for p in first), first
    assert len(first) == 2
    assert not [p for p in listing([run]) if p.endswith(".tmp")]
    assert RunReader(run).spans().equals(RunReader(bases["segs"]).spans())


def test_verify_add_checksums_failing_leaves_no_half_sidecar(bases: dict[str, Path],
                                                             tmp_path: Path,
                                                             monkeypatch) -> None:
    from profiler.errors import InputError
    from profiler.store import verify as verify_mod

    run = _no_crc_copy(bases["segs"], tmp_path / "nocrc")
    before = listing([run])
    real = verify_mod.write_segment_checksum

    def full(path, **kw):
        real(path, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(verify_mod, "write_segment_checksum", full)
    with pytest.raises(InputError, match="cannot add a checksum beside .*no space left"):
        verify_mod.add_missing_checksums(run, verify_mod.verify_run(run))
    assert listing([run]) == before
