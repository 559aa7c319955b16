"""sam4em: prompt-free 3D segmentation of electron microscopy with SAM2.

The public API: `build_model` / `load_model` (models), `segment_volume` (inference on an array),
`open_volume` / `create_volume` (any EM file format), `train` (dual-stage fine-tuning).
Names are imported on first use, so that `import sam4em` (and every DataLoader worker) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SAM4EM": "sam4em.models",
    "build_model": "sam4em.models",
    "list_models": "sam4em.models",
    "load_model": "sam4em.models",
    "save_model": "sam4em.models",
    "segment_volume": "sam4em.inference.segment",
    "open_volume": "sam4em.io",
    "create_volume": "sam4em.io",
    "train": "sam4em.training.trainer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam4em' has no attribute {name!r}")
