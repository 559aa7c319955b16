"""`compile_parts`: a model compiled with `torch.compile` for long inference runs (``sam4em segment --compile``).

A SAM4EM is compiled part by part rather than whole. Between the parts, the memory bank's bookkeeping
(a Python list of entries that grows to its capacity) stays eager. Compiled whole, every new bank length
recompiled the model, minutes each on a CPU (docs/benchmarks.md, `torch.compile` probe). Part by part,
only memory attention sees a length that changes, and torch's automatic dynamic shapes absorb it after
one recompilation. `nn.Module.compile` compiles in place, so the state dict keeps its keys (a run
record's weight digest and a resume are unaffected).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sam4em.models.sam4em import SAM4EM

__all__ = ["COMPILED_PARTS", "compile_parts"]

#: The SAM4EM submodules compiled, each on its own (those a model lacks are skipped). The memory
#: encoder's downsampler and fuser are named, not the encoder: a shared memory calls them itself. So
#: is joint decoding, which runs the decoders' parts itself (the decoders' forward then never runs).
COMPILED_PARTS = (
    "image_encoder", "enhancer", "prompt_generator", "stage1_decoder", "stage2_decoder", "joint_decoding",
    "detail_head", "detail_head.stem", "memory.memory_encoder.mask_downsampler", "memory.memory_encoder.memory_fuser",
    "memory.memory_attention",
)


def compile_parts(model: nn.Module, **options: Any) -> None:
    """Compile `model` in place: a SAM4EM part by part (`COMPILED_PARTS`), any other model whole;
    `options` go to `torch.compile`. Compilation happens in the first calls (again for a new batch
    size), minutes on a CPU."""
    if not isinstance(model, SAM4EM):
        model.compile(**options)
        return
    for path in COMPILED_PARTS:
        try:
            part = model.get_submodule(path)
        except AttributeError:  # an ablation without the part
            continue
        part.compile(**options)
