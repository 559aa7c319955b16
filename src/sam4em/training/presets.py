"""Resource presets: batch sizes, clip length and gradient accumulation that fit a device class.

A preset fills only what the config leaves unset: a value written in the YAML or given with ``--set``
always wins, so a preset never silently changes a run the config describes.
"""

from __future__ import annotations

from typing import Any

import torch

from sam4em.training.config_error import ConfigError

# The config fields a preset may fill, by their dotted path.
PRESET_KEYS = ("stage1.batch_size", "stage2.batch_size", "stage2.clip_length", "grad_accumulation")
# Values of PRESET_KEYS, in that order.
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


def resolve_preset(preset: str) -> str:
    """The preset name `preset` stands for (``auto``: by the device)."""
    name = default_preset() if preset == "auto" else preset
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    return name


def fill_unset(data: dict[str, Any], preset: str) -> dict[str, Any]:
    """A copy of plain config `data` with the fields of `preset` added where `data` has none."""
    filled = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for key, value in zip(PRESET_KEYS, PRESETS[resolve_preset(preset)], strict=True):
        *sections, name = key.split(".")
        target = filled
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{section}: expected a mapping, got {target!r}")
        target.setdefault(name, value)
    return filled


def resource_values(config: Any) -> dict[str, Any]:
    """The values of the preset fields in a built `TrainConfig`, by dotted path."""
    values = {}
    for key in PRESET_KEYS:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        values[key] = value
    return values
