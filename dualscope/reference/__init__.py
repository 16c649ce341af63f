"""The bundled reference MoE training run (issue 4): a scaled-down DeepSeek-V3-style model
trained with expert parallelism and ``torch.distributed.pipelining`` (DualPipeV by default),
instrumented end to end into a dualscope run directory.

Files, torchtitan style: :mod:`.config` (plain dataclasses, validated without torch),
:mod:`.launch` (the torchrun command), :mod:`.model` (attention, DeepSeekMoE, stages),
:mod:`.routing` (the gate), :mod:`.parallelize` (process groups, EP all-to-all, pipeline),
:mod:`.overlap` (OVERLAP_F_B), :mod:`.clock` (clock offsets), :mod:`.capture` (GPU kernel
capture), :mod:`.data` (synthetic tokens), :mod:`.train` (the torchrun entry point).
Only :mod:`.config` and :mod:`.launch` may be imported without torch.
"""
