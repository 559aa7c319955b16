"""Models: the SAM4EM module, its parts, the registry of bases and (de)serialisation."""

from sam4em.models.registry import (
    MODELS,
    BuildOptions,
    CheckpointError,
    ModelSpec,
    build_model,
    list_models,
    set_trainable,
)
from sam4em.models.sam4em import SAM4EM, ClipOutput, ImageFeatures, SliceOutput
from sam4em.models.serialization import load_model, save_model

__all__ = [
    "MODELS",
    "SAM4EM",
    "BuildOptions",
    "CheckpointError",
    "ClipOutput",
    "ImageFeatures",
    "ModelSpec",
    "SliceOutput",
    "build_model",
    "list_models",
    "load_model",
    "save_model",
    "set_trainable",
]
