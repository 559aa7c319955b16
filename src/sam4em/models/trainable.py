"""Which parameters train: the fine-tuning policy of SAM4EM under ``full`` and ``lora``.

- ``full`` (from-scratch bases): everything trains but the memory.
- ``lora`` (pretrained bases): LoRA and the adapters train (`is_adapter_parameter`); SAM2's own
  weights stay frozen.
- The memory (memory encoder and memory attention) trains only in the 3D stage, when asked.
- SAM2 parts that prompt-free training never reads stay frozen in every mode.
"""

from __future__ import annotations

import re

from torch import nn

from sam4em.models.info import FineTune
from sam4em.models.lora import is_lora_parameter

__all__ = ["is_adapter_parameter", "set_trainable"]

# SAM2 parts that prompt-free training never trains, frozen in every mode so that optimisers do not
# carry dead weights: point prompts; the IoU head and multimask hypernetworks (read only in eval mode,
# by the optional multimask fallback); the object-score head (only its sign is read, to mark classes
# absent in memory, and a sign has no gradient).
_UNUSED = re.compile(
    r"^prompt_encoder\.(point_embed|not_a_point_embed|shared_embedding)\."
    r"|^stage[12]_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.[1-9])\."
)


def is_adapter_parameter(name: str) -> bool:
    """Parameters that LoRA fine-tuning trains besides LoRA itself: the enhancer, the detail head, the prompt generator,
    joint decoding's class embeddings, SAM's mask-prompt embedding (stage 2 reads stage-1 logits through it) and
    the decoders' output heads (everything of a decoder outside its two-way transformer)."""
    if _UNUSED.match(name):
        return False
    if name.startswith(("enhancer.", "detail_head.", "prompt_generator.", "joint_decoding.", "prompt_encoder.mask_embed.")):
        return True
    return name.startswith(("stage1_decoder.", "stage2_decoder.")) and ".transformer." not in name


def set_trainable(model: nn.Module, *, finetune: FineTune, memory: bool) -> None:
    """`full`: everything but the memory trains. `lora`: LoRA and adapter parameters train, SAM2's own
    weights stay frozen. `memory=True` also trains the memory encoder and memory attention (the 3D
    stage); in the 2D stage they have nothing to learn from."""
    for name, parameter in model.named_parameters():
        if _UNUSED.match(name):
            parameter.requires_grad_(False)
        elif name.startswith("memory."):
            parameter.requires_grad_(memory)
        elif finetune == "full":
            parameter.requires_grad_(True)
        else:
            trainable = is_lora_parameter(name) or is_adapter_parameter(name)
            parameter.requires_grad_(trainable)
