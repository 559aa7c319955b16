"""The compared methods, all built from one `TrainConfig` so they train on equal terms.

- ``sam4em``: the full method (enhancer, prompt generator, two stages, memory).
- ``sam4em-no-enhancer``: ablation without the feature enhancer.
- ``two-stage-no-memory``: H-SAM-like, two decoding stages, no memory, 2D training only.
- ``samed``: SAMed-like, SAM2 + LoRA with one decoder and static prompts, no memory.
- ``unet2d`` / ``unet3d``: MONAI U-Nets trained from scratch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sam4em.models import build_model
from sam4em.models.registry import base_spec
from sam4em.models.unet import UNet2D, UNet3D
from sam4em.training.config import TrainConfig

SAM_METHODS: dict[str, dict[str, Any]] = {
    "sam4em": {},
    "sam4em-no-enhancer": {"enhancer": False},
    "two-stage-no-memory": {"memory": False},
    "samed": {"two_stage": False, "prompt_generator": False, "memory": False, "enhancer": False, "detail_head": False},
}


def build_method(config: TrainConfig, num_classes: int) -> nn.Module:
    """The untrained model of `config.method` for `num_classes` classes."""
    m = config.model
    image_size = m.image_size or base_spec(m.base).image_size
    if config.method == "unet2d":
        return UNet2D(num_classes=num_classes, image_size=image_size)
    if config.method == "unet3d":
        return UNet3D(num_classes=num_classes, image_size=image_size, clip_length=config.stage2.clip_length)
    options = {
        "image_size": m.image_size,
        "lora_rank": m.lora_rank,
        "lora_alpha": m.lora_alpha,
        "decoder_lora": m.decoder_lora,
        "memory_capacity": m.memory_capacity,
        "finetune": m.finetune,
        "multimask_fallback": m.multimask_fallback,
        **SAM_METHODS[config.method],
    }
    return build_model(m.base, num_classes, pretrained=m.pretrained, **options)


def is_clip_model(model: nn.Module, stage: int) -> bool:
    """Whether `stage` trains `model` on clips (memory stage, or a volumetric U-Net) rather than slices."""
    return stage == 2 or bool(getattr(model, "is_volumetric", False))
