"""Resource presets: batch sizes, clip length and gradient accumulation that fit a device class.

A preset is a list of ``--set`` overrides applied before the user's own, so ``--set`` always wins.
"""

from __future__ import annotations

import torch

from sam4em.training.config import ConfigError

# (stage-1 batch, stage-2 batch, longest clip, gradient accumulation)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "cpu": (4, 1, 6, 1),
    "gpu-16gb": (8, 2, 8, 1),
    "gpu-40gb": (16, 4, 8, 1),
    "gpu-80gb": (32, 8, 8, 1),
}


def default_preset() -> str:
    """The preset for the device at hand: by GPU memory, or `cpu`."""
    if not torch.cuda.is_available():
        return "cpu"
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return "gpu-80gb" if gib >= 70 else "gpu-40gb" if gib >= 35 else "gpu-16gb"


def preset_overrides(preset: str | None, clip_length: int | None = None) -> list[str]:
    """``--set`` strings for `preset` (`None` or ``auto``: by the device). The clip length only shrinks."""
    name = default_preset() if preset in (None, "auto") else preset
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    batch1, batch2, clip, accumulation = PRESETS[name]
    if clip_length is not None:
        clip = min(clip, clip_length)
    return [
        f"stage1.batch_size={batch1}",
        f"stage2.batch_size={batch2}",
        f"stage2.clip_length={clip}",
        f"grad_accumulation={accumulation}",
    ]
