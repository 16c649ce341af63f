"""The reference model and the timers in one process: routing rules, dispatch, data, spans."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from dualscope.reference.config import ModelConfig  # noqa: E402
from dualscope.reference.data import MarkovData  # noqa: E402
from dualscope.reference.model import Expert, MoE, build_stage, loss_fn  # noqa: E402
from dualscope.reference.routing import Gate  # noqa: E402
from probes.timers import HostTimers, NullTimers, RunClock, instrument_pipeline, p2p_timing  # noqa: E402

pytestmark = pytest.mark.torch


def test_gate_is_node_limited_and_normalised() -> None:
    torch.manual_seed(0)
    g = Gate(hidden=16, experts=16, top_k=4, groups=8, max_groups_per_token=2, route_scale=2.5)
    w, idx = g(torch.randn(500, 16))
    assert idx.shape == (500, 4) and w.shape == (500, 4)
    groups_used = torch.tensor([len(set((row // 2).tolist())) for row in idx])
    assert groups_used.max() <= 2
    assert torch.allclose(w.sum(-1), torch.full((500,), 2.5))
    assert int(g.load.sum()) == 500 * 4
    assert g.groups_used[1] == 500 and 1 <= g.groups_used[0] / 500 <= 2


def test_bias_is_for_selection_only_and_balances() -> None:
    torch.manual_seed(0)
    g = Gate(hidden=8, experts=4, top_k=1, groups=1, max_groups_per_token=1,
             bias_update_speed=0.5)
    x = torch.randn(64, 8)
    w0, idx0 = g(x)
    load = torch.tensor([40.0, 20.0, 4.0, 0.0])
    g.update_bias(load)
    assert g.bias.tolist() == [-0.5, -0.5, 0.5, 0.5]  # sign(mean - load) * speed
    assert not g.bias.requires_grad and "bias" not in dict(g.named_parameters())
    w1, idx1 = g(x)
    # the weight of a chosen expert is its affinity (normalised), never the biased score
    assert torch.allclose(w1, torch.ones_like(w1))
    g.reset_stats()
    assert g.load.sum() == 0


def test_moe_output_is_shared_plus_weighted_routed_experts() -> None:
    cfg = ModelConfig(hidden=16, experts=4, top_k=2, expert_groups=2, max_groups_per_token=2)
    moe = MoE(cfg, layer=0, seed=3)
    x = torch.randn(2, 5, 16)
    flat = x.reshape(-1, 16)
    w, idx = moe.gate(flat)
    moe.gate.reset_stats()
    expect = moe.shared(flat).clone()
    for n in range(flat.shape[0]):
        for j in range(2):
            expect[n] += w[n, j] * moe.local_experts.experts[int(idx[n, j])](flat[n:n + 1])[0]
    assert torch.allclose(moe(x).reshape(-1, 16), expect, atol=1e-5)


def test_model_is_the_same_whatever_the_layout() -> None:
    """Stage 0 of a 2-stage and of a 4-stage cut start with the same embedding and layers;
    EP rank 1 of 2 holds global experts 4..7, identical to those of the unsharded model."""
    cfg = ModelConfig(layers_per_stage=1)
    a = build_stage(cfg, 0, 2, seed=5)
    b = build_stage(cfg, 0, 4, seed=5)
    assert a.embed is not None and b.embed is not None
    assert torch.equal(a.embed.weight, b.embed.weight)
    full = build_stage(cfg, 1, 2, seed=5).moe_layers()[0]
    half = build_stage(cfg, 1, 2, seed=5, ep_rank=1, ep_size=2).moe_layers()[0]
    assert full.layer == half.layer == 1
    e_full = full.local_experts.experts[5]
    e_half = half.local_experts.experts[1]
    assert isinstance(e_full, Expert) and isinstance(e_half, Expert)
    assert torch.equal(e_full.w1.weight, e_half.w1.weight)


def test_markov_data_is_learnable_and_seeded() -> None:
    d = MarkovData(64, 32, seed=0)
    x, y = d.batch(step=3, shard=1, n_seqs=4)
    x2, _ = d.batch(step=3, shard=1, n_seqs=4)
    x3, _ = d.batch(step=3, shard=2, n_seqs=4)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert 0.5 < d.entropy_nats < 1.0
    cfg = ModelConfig(layers_per_stage=1)
    model = build_stage(cfg, 0, 1, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a busy CI machine
    try:
        for step in range(10):
            x, y = d.batch(step, 0, 8)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0] - 0.8, losses


# -- timers ---------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.flushes = 0
        self.closed = False

    def write(self, table: pa.Table) -> None:
        self.tables.append(table)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def rows(self) -> list[dict[str, Any]]:
        return pa.concat_tables(self.tables).to_pylist() if self.tables else []


class _Work:
    def __init__(self) -> None:
        self.done = False

    def is_completed(self) -> bool:
        return self.done

    def wait(self) -> None:
        self.done = True


class _Op:
    def __init__(self, n: int) -> None:
        self.tensor = torch.zeros(n)


def test_host_timers_record_actions_comm_and_p2p() -> None:
    sink = _Sink()
    clock = RunClock(offset_ns=1_000)
    t = HostTimers(rank=3, clock=clock, writer=sink, flush_s=60)
    t.begin_step(7)
    send, recv = _Op(10), _Op(4)
    t.register_p2p([send], stage=1, microbatch=2, kind="SEND_F")
    t.register_p2p([recv], stage=1, microbatch=3, kind="RECV_B")
    ws, wr = _Work(), _Work()
    t.p2p_issued([send, recv], [ws, wr])
    with (t.action("(1F2;1B3)OVERLAP_F_B", stage=1, microbatch=2, op="FB"),
          t.action("1F2", stage=1, microbatch=2, op="F"),
          t.comm("dispatch", nbytes=123, pg="ep")):
        pass
    ws.done = True
    t.poll()  # the send completes as seen at the next boundary
    t0 = clock.now_ns()
    wr.wait()
    t.p2p_waited([wr], t0)
    with t.host("optimizer"):
        pass
    t.end_step()
    t.close()
    rows = {r["name"]: r for r in sink.rows()}
    assert sink.closed
    assert {r["step"] for r in rows.values()} == {7} and {r["rank"] for r in rows.values()} == {3}
    # a part of an F&B pair is labelled like the pair (as a kernel inherits its action's)
    f = rows["1F2"]
    assert (f["lane"], f["kind"], f["op"], f["stage"], f["microbatch"]) == ("compute", "action", "FB", 1, 2)
    assert f["annotation"] == "(1F2;1B3)OVERLAP_F_B"
    assert rows["(1F2;1B3)OVERLAP_F_B"]["op"] == "FB"
    assert rows["(1F2;1B3)OVERLAP_F_B"]["annotation"] is None
    d = rows["dispatch"]
    assert (d["lane"], d["bytes"], d["op"], d["annotation"], d["pg"]) == ("comm", 123, "FB", "1F2", "ep")
    assert f["start_ns"] <= d["start_ns"] <= d["end_ns"] <= f["end_ns"]
    s = rows["1SEND_F2"]
    assert (s["lane"], s["bytes"], s["op"]) == ("pp_comm", 40, "F")
    r = rows["1RECV_B3"]
    assert (r["lane"], r["bytes"], r["op"], r["microbatch"]) == ("pp_comm", 16, "B", 3)
    assert rows["wait:1RECV_B3"]["lane"] == "host" and rows["wait:1RECV_B3"]["kind"] == "wait"
    assert rows["ProfilerStep#7"]["kind"] == "annotation"
    assert rows["optimizer"]["lane"] == "host"
    assert all(x["start_ns"] <= x["end_ns"] for x in rows.values())


def test_host_timers_flush_on_schedule_and_from_worker_threads() -> None:
    sink = _Sink()
    t = HostTimers(rank=0, clock=RunClock(), writer=sink, flush_s=0.0)
    t.begin_step(0)

    def worker() -> None:
        with t.action("0F0", stage=0, microbatch=0, op="F"):
            pass

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert sink.tables == []  # the worker thread never flushes
    with t.action("3B0", stage=3, microbatch=0, op="B"):
        pass
    assert {r["name"] for r in sink.rows()} == {"0F0", "3B0"}


def test_null_timers_leave_the_pipeline_untouched() -> None:
    class Stage:
        stage_index = 0

        def forward_one_chunk(self, i: int) -> int:
            return i

    st = Stage()
    before = st.forward_one_chunk
    t = NullTimers()
    instrument_pipeline([st], t)
    assert st.forward_one_chunk == before
    from torch.distributed.pipelining import schedules

    orig = schedules._batch_p2p
    with p2p_timing(t):
        assert schedules._batch_p2p is orig
    with t.action("x", stage=0, microbatch=0, op="F"), t.comm("y", nbytes=1, pg="ep"):
        pass


def test_p2p_timing_swaps_and_restores() -> None:
    from torch.distributed.pipelining import schedules

    sink = _Sink()
    t = HostTimers(rank=0, clock=RunClock(), writer=sink)
    orig = (schedules._batch_p2p, schedules._wait_batch_p2p)
    with pytest.raises(RuntimeError), p2p_timing(t):
        assert schedules._batch_p2p is not orig[0]
        raise RuntimeError("boom")
    assert (schedules._batch_p2p, schedules._wait_batch_p2p) == orig


def test_comm_from_another_thread_belongs_to_the_running_backward() -> None:
    """On CUDA, autograd runs a backward's ops (and the reverse all-to-all) on its own device
    thread; their comm spans still carry the backward action's labels."""
    sink = _Sink()
    t = HostTimers(rank=0, clock=RunClock(), writer=sink, flush_s=1e9)
    t.begin_step(0)

    def engine_thread() -> None:
        with t.comm("combine", nbytes=8, pg="ep"):
            pass

    with t.action("3I1", stage=3, microbatch=1, op="I"):
        th = threading.Thread(target=engine_thread)
        th.start()
        th.join()
    th = threading.Thread(target=engine_thread)  # no backward running: unlabelled
    th.start()
    th.join()
    t.flush()
    comm = [r for r in sink.rows() if r["name"] == "combine"]
    assert [(r["stage"], r["microbatch"], r["op"], r["annotation"]) for r in comm] == [
        (3, 1, "I", "3I1"), (None, None, None, None)]


def test_background_flusher_writes_while_the_caller_is_busy() -> None:
    import time

    sink = _Sink()
    t = HostTimers(rank=0, clock=RunClock(), writer=sink, flush_s=0.05, background=True)
    t.begin_step(0)
    with t.action("0F0", stage=0, microbatch=0, op="F"):
        pass
    deadline = time.monotonic() + 5
    while not sink.tables and time.monotonic() < deadline:
        time.sleep(0.01)  # the caller does nothing: the flusher thread wrote the row
    assert [r["name"] for r in sink.rows()] == ["0F0"]
    with t.action("0F1", stage=0, microbatch=1, op="F"):
        pass
    t.close()  # stops the flusher, writes the rest, closes the writer
    assert [r["name"] for r in sink.rows()] == ["0F0", "0F1"] and sink.closed
