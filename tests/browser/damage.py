"""A runs folder holding good runs next to damaged ones (issue 12: the dashboard isolates runs):
bit-flipped data files, type-wrong and unreadable manifests, a segment that is a directory.
Shared by tests/test_dashboard_isolation.py and the browser test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
SYN = "synthetic-dsv3-pp16-ep64"
REF = "reference-cpu-pp2-ep2-dualpipev"

#: damaged run -> the part of its reason the Runs page and its error card must show
DAMAGED = {
    "bitflip-spans": "bitflip-spans/spans/rank-00000/part-000000-000002.parquet",
    "bitflip-counters": "bitflip-counters/counters/vm.rank-00001/part-000000-000001.parquet",
    "manifest-list": "manifest-list/manifest.json",
    "manifest-wrong-type": "topology",
    "manifest-not-utf8": "manifest-not-utf8/manifest.json",
    "segment-is-a-dir": "segment-is-a-dir/spans/rank-00002/seg-000009.arrows",
}


def flip_bit(path: Path, at: float = 0.5, bit: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 1 << bit
    path.write_bytes(bytes(data))


def make_runs(root: Path, *, damaged: bool = True, good: tuple[str, ...] = (SYN, REF)) -> Path:
    """``root`` with links to the ``good`` samples and, with ``damaged``, the runs of
    :data:`DAMAGED` (copies of the reference sample, each broken one way)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in good:
        (root / name).symlink_to(SAMPLES / name, target_is_directory=True)
    if not damaged:
        return root
    ref = SAMPLES / REF
    for name in DAMAGED:
        shutil.copytree(ref, root / name, symlinks=False)
    flip_bit(root / DAMAGED["bitflip-spans"])
    flip_bit(root / DAMAGED["bitflip-counters"], at=0.6)
    (root / "manifest-list" / "manifest.json").write_text("[]")
    m = json.loads((root / "manifest-wrong-type" / "manifest.json").read_text())
    m["topology"] = []
    (root / "manifest-wrong-type" / "manifest.json").write_text(json.dumps(m))
    raw = (root / "manifest-not-utf8" / "manifest.json").read_bytes()
    (root / "manifest-not-utf8" / "manifest.json").write_bytes(b"\xff\xfe" + raw)
    (root / DAMAGED["segment-is-a-dir"]).mkdir()
    return root
