"""``dualscope demo``: the dashboard on the bundled samples, plus a live run to watch.

With no arguments and no GPU: a runs folder is made (a temporary one unless ``--runs-dir``),
the bundled samples are linked into it (copied where links are not possible), and the
dashboard serves it. Unless ``--no-live``, a short run is written beside them while you watch:
the reference MoE training on CPU when torch is installed (``dualscope run-reference``), else
the synthetic generator writing step by step (labelled synthetic). The URL is printed; Ctrl-C
stops the dashboard and the background run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from dashboard.commands.serve_cmd import serve

__all__ = ["command", "samples_dir", "prepare_runs_dir", "live_command"]

LIVE_NAME = "live-reference-cpu"
LIVE_SYNTHETIC_NAME = "live-synthetic"


def samples_dir() -> Path:
    """The bundled ``sample_traces`` folder (from the installed package or the checkout)."""
    spec = importlib.util.find_spec("sample_traces")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if Path(loc).is_dir():
                return Path(loc)
    here = Path(__file__).resolve().parents[2] / "sample_traces"  # dashboard/commands/ -> root
    if here.is_dir():
        return here
    raise click.ClickException("the bundled sample_traces folder is missing; reinstall "
                               "dualscope (pip install -e .) from a full checkout")


def prepare_runs_dir(target: Path, samples: Path) -> list[str]:
    """Link (or copy) every sample run into ``target``; returns the run names."""
    target.mkdir(parents=True, exist_ok=True)
    names = []
    for run in sorted(p for p in samples.iterdir() if (p / "manifest.json").is_file()):
        dest = target / run.name
        if not dest.exists():
            try:
                dest.symlink_to(run, target_is_directory=True)
            except OSError:
                shutil.copytree(run, dest)
        names.append(run.name)
    return names


def live_command(runs_dir: Path, steps: int) -> tuple[list[str], str]:
    """(argv, run name) of the background run: the CPU reference run when torch is
    installed, else the synthetic generator in real time."""
    if importlib.util.find_spec("torch") is not None:
        out = runs_dir / LIVE_NAME
        return ([sys.executable, "-m", "dualscope", "run-reference", "--nproc", "4", "--pp", "2",
                 "--ep", "2", "--schedule", "dualpipev", "--steps", str(steps), "--device", "cpu",
                 "--out", str(out)], LIVE_NAME)
    out = runs_dir / LIVE_SYNTHETIC_NAME
    return ([sys.executable, "-m", "profiler.synthetic", "--small", "--live", "1.0",
             "--steps", str(steps * 5), "--out", str(out)], LIVE_SYNTHETIC_NAME)


@click.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-live", is_flag=True, help="Do not start a live run in the background.")
@click.option("--steps", default=120, show_default=True, type=click.IntRange(1, 100000),
              help="Steps of the background reference run.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's runs here (default: a temporary folder).")
def command(host: str, port: int, no_live: bool, steps: int, runs_dir: Path | None) -> None:
    """Start the dashboard on the bundled samples (and a live run); print the URL."""
    samples = samples_dir()
    tmp = runs_dir is None
    root = Path(tempfile.mkdtemp(prefix="dualscope-demo-")) if runs_dir is None else runs_dir
    names = prepare_runs_dir(root, samples)
    proc: subprocess.Popen[bytes] | None = None
    log = root / "live-run.log"
    live_name = None
    if not no_live:
        argv, live_name = live_command(root, steps)
        if (root / live_name).exists():
            shutil.rmtree(root / live_name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with open(log, "wb") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
    url = f"http://{host}:{port}/"
    click.echo(f"dualscope demo: {url}")
    click.echo(f"  runs folder {root}" + (" (temporary)" if tmp else ""))
    for n in names:
        click.echo(f"  sample   {n}")
    if live_name:
        click.echo(f"  live     {live_name}  (written in the background; log {log})")
    click.echo("  Ctrl-C to stop")
    # SIGTERM (a service manager, `kill`) cleans up like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(str(root), host, port)
    finally:
        if proc is not None and proc.poll() is None:
            try:  # the whole process group: torchrun and its workers
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                proc.kill()
        if tmp:
            shutil.rmtree(root, ignore_errors=True)
