"""The manifest schema (issue 12, item 2): every type-wrong, missing, unknown-version or
non-UTF-8 manifest is refused with one line naming the file and the field; nothing crashes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from profiler.errors import RunFormatError
from profiler.manifest import Manifest, Parallel, ProbeStatus, Topology
from profiler.store import RunReader

GOOD: dict[str, Any] = Manifest(
    source="import", topology=Topology(nodes=2, gpus_per_node=8, sms_per_gpu=132),
    parallel=Parallel(world_size=16, pp=4), probes={"nvml": ProbeStatus(True)},
    clock_offsets_ns={1: 5}, extra={"files": []}).to_dict()

#: (path into the manifest, a value of the wrong type)
SWAPS: list[tuple[tuple[str, ...], Any]] = []
for _v in ([], "x", 1.5, True, {"a": 1}):
    for _p in (("topology",), ("parallel",), ("probes",), ("clock_offsets_ns",)):
        if not isinstance(_v, dict) or _p == ("probes",):
            SWAPS.append((_p, _v))
for _p in (("topology", "nodes"), ("topology", "sms_per_gpu"), ("parallel", "pp"),
           ("parallel", "world_size"), ("topology", "nvlink_peak_bytes_per_s")):
    for _v in ("2", [2], {"n": 2}, True):
        SWAPS.append((_p, _v))
for _p, _v in ((("topology", "gpu_name"), 5), (("parallel", "schedule"), []),
               (("probes", "nvml"), "yes"), (("probes", "nvml", "available"), "yes"),
               (("probes", "nvml", "reason"), 3), (("clock_offsets_ns", "1"), "5"),
               (("status",), 1), (("source",), "bogus"), (("source",), 7), (("run_id",), []),
               (("synthetic",), "no"), (("extra",), []), (("created_unix_ns",), "now"),
               (("clock_offsets_applied",), "yes"), (("description",), {})):
    SWAPS.append((_p, _v))


def _swap(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(GOOD))
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


def _write(run: Path, payload: bytes) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_bytes(payload)


def test_good_manifest_round_trips(tmp_path: Path) -> None:
    _write(tmp_path, json.dumps(GOOD).encode())
    m = Manifest.read(tmp_path)
    assert m.topology.sms_per_gpu == 132 and m.clock_offsets_ns == {1: 5}
    assert m.probes["nvml"].available is True


def test_at_least_fifty_swaps() -> None:
    assert len(SWAPS) >= 50


@pytest.mark.parametrize(("path", "value"), SWAPS, ids=[f"{'.'.join(p)}={v!r}" for p, v in SWAPS])
def test_type_swap_is_named(tmp_path: Path, path: tuple[str, ...], value: Any) -> None:
    _write(tmp_path, json.dumps(_swap(path, value)).encode())
    with pytest.raises(RunFormatError) as e:
        Manifest.read(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "manifest.json" in msg
    # the field is named (msgspec's $.a.b path, or the source rule's own words)
    assert path[0] in msg or "source" in msg, msg


@pytest.mark.parametrize("payload", [
    b"[]", b"null", b'"a string"', b"3", b"\xff\xfe not utf-8", b"{", b"[" * 100_000,
    json.dumps({**GOOD, "schema_version": 999}).encode(),
    json.dumps({**GOOD, "schema_version": "1"}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "schema_version"}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "source"}).encode(),
])
def test_malformed_manifest_is_one_line(tmp_path: Path, payload: bytes) -> None:
    _write(tmp_path, payload)
    with pytest.raises(RunFormatError) as e:
        RunReader(tmp_path)
    assert "\n" not in str(e.value) and "manifest.json" in str(e.value)


def test_null_objects_read_as_defaults(tmp_path: Path) -> None:
    """Older writers could leave an object null: read as 'not recorded', not an error."""
    _write(tmp_path, json.dumps({**GOOD, "topology": None, "parallel": None}).encode())
    m = Manifest.read(tmp_path)
    assert m.topology == Topology() and m.parallel == Parallel()


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    d = _swap(("topology", "future_field"), 1)
    d["newer_key"] = {"x": 1}
    _write(tmp_path, json.dumps(d).encode())
    assert Manifest.read(tmp_path).topology.nodes == 2


@pytest.mark.parametrize("cmd", [["info"], ["analyze"], ["export", "--format", "perfetto",
                                                           "--out", "OUT"]])
def test_cli_on_type_wrong_manifest(tmp_path: Path, python: str, cli_env: dict[str, str],
                                    cmd: list[str]) -> None:
    run = tmp_path / "run"
    _write(run, json.dumps(_swap(("topology",), [])).encode())
    args = [a.replace("OUT", str(tmp_path / "out.json")) for a in cmd]
    r = subprocess.run([python, "-m", "dualscope", args[0], str(run), *args[1:]],
                       capture_output=True, text=True, env=cli_env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "$.topology" in r.stderr
    assert not (tmp_path / "out.json").exists()
