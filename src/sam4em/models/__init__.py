"""Models: the SAM4EM module, its parts, the registry of bases, building, and (de)serialisation."""

from sam4em.models.builder import build_model
from sam4em.models.checkpoint_files import CheckpointError
from sam4em.models.info import BaselineOptions, BuildOptions, ModelInfo, SegmentationModel
from sam4em.models.registry import MODELS, ModelSpec, list_models
from sam4em.models.sam4em import SAM4EM, ClipOutput, ImageFeatures, SliceOutput
from sam4em.models.serialization import UntrainedModelError, load_model, save_model
from sam4em.models.trainable import set_trainable

__all__ = [
    "MODELS",
    "SAM4EM",
    "BaselineOptions",
    "BuildOptions",
    "CheckpointError",
    "ClipOutput",
    "ImageFeatures",
    "ModelInfo",
    "ModelSpec",
    "SegmentationModel",
    "SliceOutput",
    "UntrainedModelError",
    "build_model",
    "list_models",
    "load_model",
    "save_model",
    "set_trainable",
]
