"""The fault-suite harness (issue 12, item 7): run one ``dualscope`` command on a damaged or
hostile input, isolated in its own process with a timeout, and judge the outcome.

A case passes when the command

- exits with an allowed status (0 or 2, unless the case says otherwise),
- prints no ``Traceback`` on stderr,
- did not die by a signal (a segfault is rc -11, never a pass),
- finished within its timeout (a hang is killed, with its process group, and fails),
- left nothing behind: no new entry in the watched directories other than the outputs the
  case allows (a ``.<out>.*.tmp`` beside ``--out``, a temporary inside the run).

Two ways to run a case, with the same judgement:

- :func:`run_cli`: a fresh ``python -m dualscope`` process, exactly as a user runs it
  (~0.6 s of imports each);
- :class:`ForkServer`: one helper process imports dualscope and the libraries once, then forks
  a child per case that calls :func:`dualscope.cli.main` with the case's arguments. Each case
  still has its own process: a crash, a hang or a leaked thread in one case cannot affect the
  next, and the exit status is the child's own. The child, like the interpreter, prints a
  traceback for an uncaught exception and waits for non-daemon threads before it exits.

Bit flips: :func:`flip_bit` flips one seeded bit; :func:`flip_problems` says whether the
outcome was a one-line error naming the flipped file or output identical to the original.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["Case", "Outcome", "ForkServer", "run_cli", "problems", "flip_bit", "flip_problems",
           "listing", "left_behind", "cli_env"]


@dataclass(frozen=True)
class Case:
    """One command to run: ``argv`` after ``dualscope``, in ``cwd``. ``watch``: directories
    whose contents must be unchanged afterwards except for ``outputs`` (paths the command is
    allowed to create). ``ok_rc``: the exit statuses that pass."""

    id: str
    argv: tuple[str, ...]
    cwd: str = str(ROOT)
    watch: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    timeout_s: float = 60.0
    ok_rc: frozenset[int] = frozenset({0, 2})
    #: extra resource limits for the child: (RLIMIT_*, soft) pairs, e.g. a file-size cap
    rlimits: tuple[tuple[int, int], ...] = ()


@dataclass
class Outcome:
    case: Case
    rc: int | None  # exit status; None when killed by a signal or the timeout
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    wall_s: float
    left_behind: list[str] = field(default_factory=list)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


# -- what was left behind -----------------------------------------------------------------------
def listing(dirs: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Every path under ``dirs`` (recursively, not following links)."""
    out: set[str] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            continue
        for base, subdirs, files in os.walk(root):
            for name in [*subdirs, *files]:
                out.add(os.path.join(base, name))
    return out


def left_behind(before: set[str], after: set[str], outputs: Sequence[str]) -> list[str]:
    """New paths that are neither an allowed output nor inside one."""
    allowed = [os.path.abspath(o) for o in outputs]
    new = []
    for p in sorted(after - before):
        ap = os.path.abspath(p)
        if not any(ap == o or ap.startswith(o + os.sep) for o in allowed):
            new.append(p)
    return new


def problems(o: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: the case passes)."""
    out = []
    if o.timed_out:
        out.append(f"hung: killed after {o.case.timeout_s} s")
    elif o.signal is not None:
        out.append(f"died by signal {signal.Signals(o.signal).name}")
    elif o.rc not in o.case.ok_rc:
        out.append(f"exit status {o.rc} (allowed: {sorted(o.case.ok_rc)})")
    if "Traceback" in o.stderr:
        out.append("Traceback on stderr")
    if o.left_behind:
        out.append(f"left behind: {o.left_behind[:5]}")
    return out


def _judge(case: Case, before: set[str], rc: int | None, sig: int | None, timed_out: bool,
           stdout: str, stderr: str, wall: float) -> Outcome:
    after = listing(case.watch)
    return Outcome(case, rc, sig, timed_out, stdout, stderr, wall,
                   left_behind(before, after, case.outputs))


# -- a fresh interpreter per case ------------------------------------------------------------------
def _apply_rlimits(limits: tuple[tuple[int, int], ...]) -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE: EFBIG, no core
    for which, soft in limits:
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (soft, hard))


def run_cli(case: Case, *, env: dict[str, str] | None = None) -> Outcome:
    """Run ``python -m dualscope *case.argv`` in a new process (and process group)."""
    before = listing(case.watch)
    t0 = time.perf_counter()
    limits = case.rlimits
    proc = subprocess.Popen([sys.executable, "-m", "dualscope", *case.argv], cwd=case.cwd,
                            env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=(lambda: _apply_rlimits(limits)) if limits else None)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=case.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    rc = proc.returncode
    sig = -rc if rc is not None and rc < 0 else None
    return _judge(case, before, None if sig or timed_out else rc, sig, timed_out, out, err,
                  time.perf_counter() - t0)


# -- one import, a fork per case ---------------------------------------------------------------------
#: modules the fork server imports once, so that a child only runs the command
PRELOAD = (
    "pandas", "pyarrow", "pyarrow.ipc", "pyarrow.parquet", "pyarrow.compute", "orjson",
    "msgspec", "click", "dualscope.cli", "profiler.commands.info_cmd",
    "profiler.commands.analyze_cmd", "profiler.commands.export_cmd",
    "profiler.commands.verify_cmd", "profiler.commands.compare_cmd",
    "profiler.commands.model_cmd", "profiler.engine", "profiler.runinfo", "profiler.compare",
    "profiler.store.verify", "profiler.exporters.perfetto",
)


class ForkServer:
    """A helper process that imports dualscope once and forks one child per case.

    The test side talks to it over pipes (one JSON line per case each way); it runs cases
    one at a time. Use two servers to use two cores."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(env or cli_env())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.faults", "--serve"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1, start_new_session=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if line.strip() != "ready":
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"fork server did not start: {line!r} {err[-2000:]}")

    def run(self, case: Case) -> Outcome:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        before = listing(case.watch)
        req = {"argv": list(case.argv), "cwd": case.cwd, "timeout_s": case.timeout_s,
               "rlimits": [list(x) for x in case.rlimits]}
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"fork server died: {err[-2000:]}")
        r = json.loads(line)
        return _judge(case, before, r["rc"], r["signal"], r["timed_out"], r["stdout"],
                      r["stderr"], r["wall_s"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait(timeout=10)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f:
                f.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(req: dict, out_path: str, err_path: str) -> None:
    """In the forked child: run the command as the interpreter would, then exit."""
    code = 1
    try:
        os.setpgid(0, 0)  # the parent kills the whole group on a timeout
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if req["rlimits"]:
            _apply_rlimits(tuple(tuple(x) for x in req["rlimits"]))
        fd_in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd_in, 0)
        for path, fd in ((out_path, 1), (err_path, 2)):
            f = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(req["cwd"])
        sys.argv = ["dualscope", *req["argv"]]
        from dualscope.cli import main

        try:
            main(list(req["argv"]))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        # the interpreter waits for non-daemon threads before it exits: so do we
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    scratch = tempfile.mkdtemp(prefix="dualscope-faults-")
    out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
    reply = sys.stdout
    try:
        print("ready", file=reply, flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            for p in (out_path, err_path):
                open(p, "w").close()
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                _child(req, out_path, err_path)
            status, timed_out = _wait(pid, req["timeout_s"])
            wall = time.perf_counter() - t0
            rc = os.waitstatus_to_exitcode(status)
            with open(out_path, errors="replace") as f:
                stdout = f.read()
            with open(err_path, errors="replace") as f:
                stderr = f.read()
            sig = -rc if rc < 0 else None
            print(json.dumps({"rc": None if sig or timed_out else rc, "signal": sig,
                              "timed_out": timed_out, "stdout": stdout, "stderr": stderr,
                              "wall_s": wall}), file=reply, flush=True)
    finally:
        for p in (out_path, err_path):
            with contextlib.suppress(OSError):
                os.unlink(p)
        with contextlib.suppress(OSError):
            os.rmdir(scratch)


def _wait(pid: int, timeout_s: float) -> tuple[int, bool]:
    """Wait for child ``pid``; on timeout kill its process group. (status, timed out)"""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)
    if ready:
        return os.waitpid(pid, 0)[1], False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1], True


# -- bit flips ---------------------------------------------------------------------------------
def flip_bit(path: Path, rng: random.Random) -> tuple[int, int]:
    """Flip one seeded bit of ``path`` in place; returns (byte offset, bit)."""
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    b = rng.randrange(8)
    data[i] ^= 1 << b
    path.write_bytes(bytes(data))
    return i, b


def flip_problems(o: Outcome, *, flipped: str, original: str | bytes,
                  got: str | bytes | None = None) -> list[str]:
    """After a bit flip in file ``flipped`` (a path relative to the run): exit 2 with one
    line on stderr naming the file, or exit 0 with output identical to ``original``
    (``got``: the output to compare, default stdout)."""
    if o.rc == 2:
        lines = o.stderr.strip().splitlines()
        if len(lines) != 1:
            return [f"error is {len(lines)} lines, not one: {o.stderr[-300:]!r}"]
        if flipped not in lines[0]:
            return [f"error does not name {flipped}: {lines[0]!r}"]
        return []
    if o.rc == 0:
        same = (o.stdout if got is None else got) == original
        return [] if same else ["SILENT CHANGE: exit 0 with output that differs"]
    return []  # other statuses are judged by problems()


@contextlib.contextmanager
def restored(path: Path) -> Iterator[bytes]:
    """Keep ``path``'s bytes and put them back afterwards (a flip is undone)."""
    data = path.read_bytes()
    try:
        yield data
    finally:
        path.write_bytes(data)


if __name__ == "__main__" and "--serve" in sys.argv:
    _serve()
