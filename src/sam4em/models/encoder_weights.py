"""Pretrained image-encoder folders (what `sam4em pretrain` writes), usable as a model base.

A folder holds ``encoder.safetensors`` (the state of SAM2's vision encoder: Hiera + FPN neck, keys as
in transformers' ``Sam2VisionModel``) and ``config.yaml`` with a ``pretrain`` section naming the
architecture (``base``). `build_model(folder)` / ``model.base: folder`` load it strictly into that
architecture; everything else (decoders, memory) starts from the base's seeded initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ENCODER_FILE = "encoder.safetensors"
PRETRAIN_CONFIG = "config.yaml"


def is_encoder_folder(path: str | Path) -> bool:
    """Whether `path` is a pretraining run folder holding a finished encoder."""
    return (Path(path) / ENCODER_FILE).is_file()


def read_pretrain_record(path: str | Path) -> dict[str, Any]:
    """The ``pretrain`` section of a pretraining run's ``config.yaml`` (``base`` at least)."""
    config = Path(path) / PRETRAIN_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such file; is {path} a `sam4em pretrain` run folder?")
    data = yaml.safe_load(config.read_text()) or {}
    record = data.get("pretrain") if isinstance(data, dict) else None
    if not isinstance(record, dict) or "base" not in record:
        raise ValueError(f"{config}: no 'pretrain.base' entry; is {path} a `sam4em pretrain` run folder?")
    return record


def find_encoder_folders(root: str | Path) -> list[Path]:
    """Finished pretraining runs under `root` (any depth), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob(ENCODER_FILE))
