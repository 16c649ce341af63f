"""Regenerate the bundled sample runs (see README.md in this folder).

    python sample_traces/make_samples.py              # every sample this machine can make
    python sample_traces/make_samples.py synthetic    # only the cluster-scale synthetic run
    python sample_traces/make_samples.py reference    # only the CPU reference run (needs torch)

Each sample is written to a temporary directory beside its final place, compacted to Parquet
(``dualscope compact``) and then renamed over the old one, so a failed run leaves the old
sample in place. The GPU sample is never made here: it needs a machine with NVIDIA GPUs
(``dualscope run-reference --device cuda ...``, then copy the run directory in).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from profiler.manifest import Manifest  # noqa: E402
from profiler.store import compact  # noqa: E402
from profiler.synthetic import SyntheticConfig, write_run  # noqa: E402

SYNTHETIC = "synthetic-dsv3-pp16-ep64"
REFERENCE = "reference-cpu-pp2-ep2-dualpipev"
REFERENCE_ARGS = ["--nproc", "4", "--pp", "2", "--ep", "2", "--schedule", "dualpipev",
                  "--steps", "8", "--seed", "0"]


def _replace(tmp: Path, name: str) -> Path:
    target = HERE / name
    old = HERE / f".{name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)
    return target


def make_synthetic() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC}.", dir=HERE))
    shutil.rmtree(tmp)
    write_run(tmp, SyntheticConfig())
    return _replace(tmp, SYNTHETIC)


def make_reference() -> Path:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("the reference sample needs torch (pip install -e '.[reference]')") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{REFERENCE}.", dir=HERE))
    shutil.rmtree(tmp)
    cmd = [sys.executable, "-m", "profiler", "run-reference", *REFERENCE_ARGS, "--device", "cpu",
           "--out", str(tmp)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    m = Manifest.read(tmp)  # record the sample's own name, not the temporary path
    if isinstance(m.extra.get("config"), dict) and "out" in m.extra["config"]:
        m.extra["config"]["out"] = REFERENCE
        m.write(tmp)
    compact(tmp)
    return _replace(tmp, REFERENCE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="*", help="synthetic and/or reference (default: both)")
    args = ap.parse_args(argv)
    which = args.which or ["synthetic", "reference"]
    bad = set(which) - {"synthetic", "reference"}
    if bad:
        ap.error(f"unknown sample {sorted(bad)}; choose synthetic and/or reference")
    for name in which:
        path = make_synthetic() if name == "synthetic" else make_reference()
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path.relative_to(ROOT)}: {size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
