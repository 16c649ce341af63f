"""Configuration of the reference run: two plain dataclasses, validated without torch so that
``dualscope run-reference`` fails before it launches anything.

Every check raises :class:`~profiler.errors.InputError` with one line that quotes the bad
value and says how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from profiler.capture import CaptureSchedule
from profiler.errors import InputError

__all__ = [
    "SCHEDULES",
    "TORCH_SCHEDULES",
    "V_SCHEDULES",
    "ModelConfig",
    "ReferenceConfig",
    "min_microbatches",
]

#: CLI name -> class name in ``torch.distributed.pipelining``
TORCH_SCHEDULES = {
    "dualpipev": "ScheduleDualPipeV",
    "1f1b": "Schedule1F1B",
    "zbv": "ScheduleZBVZeroBubble",
}
SCHEDULES = tuple(TORCH_SCHEDULES)
#: schedules that place two stages per rank in a V (rank r holds r and 2P-1-r)
V_SCHEDULES = ("dualpipev", "zbv")
OVERLAP_MODES = ("auto", "sequential", "streams")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    """A scaled-down DeepSeek-V3: MLA attention, DeepSeekMoE FFN in every layer."""

    vocab_size: int = 64
    hidden: int = 64
    layers_per_stage: int = 2
    heads: int = 4
    #: per-head dims of MLA: the part without position, the rotary part, the value
    head_dim: int = 16
    rope_dim: int = 8
    #: low-rank compression of K/V (the latent cached at inference) and of Q (0: none)
    kv_lora_rank: int = 32
    q_lora_rank: int = 32
    #: routed experts, experts each token uses, hidden size of one routed expert
    experts: int = 8
    top_k: int = 2
    expert_hidden: int = 64
    #: one shared expert of ``shared_expert_hidden`` (DeepSeekMoE: one shared + E routed)
    shared_expert_hidden: int = 64
    #: experts are split into this many groups ("nodes"); a token may use experts of at most
    #: ``max_groups_per_token`` of them (node-limited routing, DeepSeek-V3: 8 groups, 4)
    expert_groups: int = 4
    max_groups_per_token: int = 2
    route_scale: float = 1.0
    #: step of the auxiliary-loss-free balancing: bias_i += speed * sign(mean load - load_i)
    bias_update_speed: float = 1e-3
    seq_len: int = 32
    rope_theta: float = 10000.0

    def validate(self, ep: int) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("q_lora_rank",):
                if v < 0:
                    raise InputError(f"--{_opt(f.name)} {v} must be 0 (no compression) or positive")
            elif isinstance(v, (int, float)) and f.name != "bias_update_speed" and v <= 0:
                raise InputError(f"--{_opt(f.name)} {v} must be positive")
        if self.bias_update_speed < 0:
            raise InputError(f"--bias-update-speed {self.bias_update_speed} must be >= 0")
        if self.experts % ep:
            raise InputError(
                f"--experts {self.experts} is not divisible by --ep {ep}: each EP rank holds "
                f"experts/EP experts; use --experts {ep * -(-self.experts // ep)} or change --ep"
            )
        if self.experts % self.expert_groups:
            raise InputError(
                f"--experts {self.experts} is not divisible by --expert-groups "
                f"{self.expert_groups}; use a divisor of {self.experts}"
            )
        if self.max_groups_per_token > self.expert_groups:
            raise InputError(
                f"--max-groups-per-token {self.max_groups_per_token} exceeds --expert-groups "
                f"{self.expert_groups}; use at most {self.expert_groups}"
            )
        per_group = self.experts // self.expert_groups
        reachable = self.max_groups_per_token * per_group
        if self.top_k > reachable:
            raise InputError(
                f"--top-k {self.top_k} exceeds the {reachable} experts a token can reach "
                f"({self.max_groups_per_token} groups x {per_group} experts); lower --top-k "
                "or raise --max-groups-per-token"
            )
        if self.rope_dim % 2:
            raise InputError(f"--rope-dim {self.rope_dim} must be even (rotary pairs)")


def _opt(name: str) -> str:
    return name.replace("_", "-")


def min_microbatches(schedule: str, pp: int) -> int:
    """Fewest micro-batches ``schedule`` accepts on ``pp`` pipeline ranks, torch's own rules
    (2.13): DualPipeV needs at least one per stage (2·PP), 1F1B one per stage (PP); ZBV runs
    with any number (with fewer than 2·PP its V is never full)."""
    if schedule == "dualpipev":
        return 2 * pp
    return pp if schedule == "1f1b" else 1


@dataclass
class ReferenceConfig:
    """One reference run: parallel layout, schedule, training and instrumentation."""

    out: str
    pp: int = 2
    ep: int = 2
    dp: int = 1
    #: processes per node and nodes (torchrun's --nproc-per-node / --nnodes)
    nproc: int = 4
    nnodes: int = 1
    schedule: str = "dualpipev"
    #: micro-batches per step (per pipeline); None: twice the minimum of the schedule
    microbatches: int | None = None
    #: sequences per micro-batch
    microbatch_size: int = 2
    steps: int = 20
    lr: float = 3e-3
    seed: int = 0
    #: continuous timers (pipeline actions, EP and PP communication)
    instrument: bool = True
    #: benchmark mode: timers on even steps only (bench/bench_reference.py)
    instrument_ab: bool = False
    #: GPU only: a torch.profiler capture of one step every N steps (0: never)
    profile_every: int = 0
    #: OVERLAP_F_B: ``streams`` runs F and B on two threads / CUDA streams, ``sequential``
    #: one after the other; ``auto``: streams on GPU, sequential on CPU
    overlap: str = "auto"
    device: str = "auto"
    #: seconds a collective may wait before the run fails (process-group timeout)
    timeout_s: float = 120.0
    #: how often each rank hands buffered spans to its stream (seconds)
    flush_s: float = 0.5
    #: fsync every flushed batch (crash-safe against power loss, not only process death)
    fsync: bool = False
    #: capture schedule: full spans for ``trace_steps`` of every ``trace_every`` steps (0: all
    #: steps keep their spans); step results are kept for every step either way
    trace_every: int = 0
    trace_steps: int = 1
    #: compute per-step results while the run trains (the launcher follows the run)
    step_results: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    # -- derived -------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def num_stages(self) -> int:
        return 2 * self.pp if self.schedule in V_SCHEDULES else self.pp

    @property
    def n_microbatches(self) -> int:
        if self.microbatches is not None:
            return self.microbatches
        return 2 * self.num_stages

    @property
    def torch_schedule(self) -> str:
        return TORCH_SCHEDULES[self.schedule]

    def capture(self) -> CaptureSchedule | None:
        """The capture schedule (None: every step keeps its spans)."""
        if self.trace_every <= 0:
            return None
        return CaptureSchedule(every=self.trace_every, steps=self.trace_steps)

    # -- checks --------------------------------------------------------------------------
    def validate(self) -> ReferenceConfig:
        for name in ("pp", "ep", "dp", "nproc", "nnodes", "microbatch_size", "steps"):
            v = getattr(self, name)
            if v < 1:
                raise InputError(f"--{_opt(name)} {v} must be at least 1")
        if self.world_size != self.pp * self.ep * self.dp:
            raise InputError(
                f"world size {self.world_size} (--nproc {self.nproc} x --nnodes {self.nnodes}) "
                f"does not factor as --pp {self.pp} x --ep {self.ep} x --dp {self.dp} = "
                f"{self.pp * self.ep * self.dp}; make PP x EP x DP equal the number of processes"
            )
        if self.schedule not in TORCH_SCHEDULES:
            raise InputError(
                f"--schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}"
            )
        need = min_microbatches(self.schedule, self.pp)
        if self.n_microbatches < need:
            rule = "2 x PP: one per stage of the V" if self.schedule in V_SCHEDULES else "PP"
            # (only dualpipev and 1f1b have a minimum above 1)
            raise InputError(
                f"--schedule {self.schedule} with --pp {self.pp} runs {self.num_stages} stages and "
                f"needs at least {need} micro-batches ({rule}), got --microbatches "
                f"{self.n_microbatches}; use --microbatches {need} or more"
            )
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr} must be positive")
        if self.profile_every < 0:
            raise InputError(f"--profile-every {self.profile_every} must be 0 (off) or positive")
        if self.overlap not in OVERLAP_MODES:
            raise InputError(f"--overlap {self.overlap!r} is unknown; use one of {OVERLAP_MODES}")
        if self.device not in DEVICES:
            raise InputError(f"--device {self.device!r} is unknown; use one of {DEVICES}")
        if self.timeout_s <= 0 or self.flush_s <= 0:
            raise InputError("--timeout-s and --flush-s must be positive")
        if self.trace_every:
            if not self.step_results:
                raise InputError("--trace-every keeps full spans only for capture windows and "
                                 "relies on step results for the other steps; drop "
                                 "--no-step-results")
            self.capture()  # validates --trace-every / --trace-steps
        elif self.trace_every < 0:
            raise InputError(f"--trace-every {self.trace_every} must be 0 (every step keeps its "
                             "spans) or positive")
        self.model.validate(self.ep)
        return self

    # -- (de)serialisation: the launcher hands the config to every worker as JSON ---------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"reference config has unknown keys {sorted(unknown)}")
        kw = dict(d)
        model = kw.pop("model", None) or {}
        mknown = {f.name for f in fields(ModelConfig)}
        bad = set(model) - mknown
        if bad:
            raise InputError(f"reference model config has unknown keys {sorted(bad)}")
        return cls(model=ModelConfig(**model), **kw)

    @classmethod
    def from_json(cls, text: str) -> ReferenceConfig:
        return cls.from_dict(json.loads(text))
