"""``dualscope run-reference`` fails fast, before launching, with one-line messages; the
torchrun command it builds. No torch, no processes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dualscope.cli import main
from dualscope.reference import launch as launch_mod
from dualscope.reference.config import ModelConfig, ReferenceConfig, min_microbatches
from dualscope.reference.launch import check_torch, torchrun_command, worker_env
from profiler.errors import InputError


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nproc", "3"], "world size 3 (--nproc 3 x --nnodes 1) does not factor as --pp 2 x "
                           "--ep 2 x --dp 1 = 4"),
        (["--microbatches", "3"], "needs at least 4 micro-batches (2 x PP: one per stage of the "
                                  "V), got --microbatches 3; use --microbatches 4 or more"),
        (["--schedule", "1f1b", "--microbatches", "1"], "use --microbatches 2 or more"),
        (["--experts", "6", "--ep", "4", "--pp", "1"], "--experts 6 is not divisible by --ep 4"),
        (["--top-k", "5"], "--top-k 5 exceeds the 4 experts a token can reach"),
        (["--max-groups-per-token", "5"], "--max-groups-per-token 5 exceeds --expert-groups 4"),
    ],
)
def test_bad_layouts_fail_before_launch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        args: list[str], needle: str) -> None:
    code, _, err = _run(["run-reference", "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_existing_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["run-reference", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "already exists; choose a new --out path or remove it first" in err


def test_missing_torch_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launch_mod, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install torch==2\.13\.0"):
        check_torch()
    code, _, err = _run(["run-reference", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "torch is not installed" in err and "dualscope[reference]" in err


def test_min_microbatches_follow_torch() -> None:
    assert min_microbatches("dualpipev", 2) == 4
    assert min_microbatches("1f1b", 3) == 3
    assert min_microbatches("zbv", 4) == 1


def test_dry_run_prints_the_torchrun_command(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["run-reference", "--out", str(tmp_path / "run"), "--steps", "3",
                         "--dry-run"], capsys)
    assert code == 0
    argv = shlex.split(out)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes"]
    assert "--standalone" in argv and argv[argv.index("--nproc-per-node") + 1] == "4"
    cfg = ReferenceConfig.from_json(argv[argv.index("--config") + 1])
    assert (cfg.pp, cfg.ep, cfg.dp, cfg.steps, cfg.schedule) == (2, 2, 1, 3, "dualpipev")
    assert cfg.n_microbatches == 8  # 2 x stages
    assert not (tmp_path / "run").exists()


def test_multinode_arguments_pass_through() -> None:
    cfg = ReferenceConfig(out="/shared/run", nproc=8, nnodes=2, pp=4, ep=4).validate()
    cmd = torchrun_command(cfg, node_rank=1, rdzv_endpoint="head:29500", rdzv_id="job7")
    joined = " ".join(cmd[:-1])
    assert "--nnodes 2 --nproc-per-node 8" in joined
    assert "--rdzv-backend c10d --rdzv-endpoint head:29500 --rdzv-id job7 --node-rank 1" in joined
    assert "--standalone" not in cmd
    with pytest.raises(InputError, match="--nnodes 2 needs --rdzv-endpoint"):
        torchrun_command(cfg)


def test_config_json_roundtrip_and_worker_env() -> None:
    cfg = ReferenceConfig(out="r", model=ModelConfig(hidden=32)).validate()
    again = ReferenceConfig.from_json(cfg.to_json())
    assert again == cfg and again.model.hidden == 32
    with pytest.raises(InputError, match="unknown keys"):
        ReferenceConfig.from_dict({"out": "r", "bogus": 1})
    env = worker_env({"PYTHONPATH": "/x"})
    root = str(Path(launch_mod.__file__).resolve().parents[2])
    assert env["PYTHONPATH"].split(":")[:2] == [root, "/x"]
    assert env["OMP_NUM_THREADS"] == "1"
