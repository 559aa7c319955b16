"""sam4em: prompt-free 3D segmentation of electron microscopy with SAM2.

The public API: `build_model` / `load_model` (models), `segment_volume` (inference on an array).
"""

from sam4em.inference.segment import segment_volume
from sam4em.models import SAM4EM, build_model, list_models, load_model, save_model

__version__ = "0.1.0"

__all__ = ["SAM4EM", "__version__", "build_model", "list_models", "load_model", "save_model", "segment_volume"]
