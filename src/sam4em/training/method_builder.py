"""`build_method`: the untrained model of a config's method, and how each stage feeds it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sam4em.models import SAM4EM, build_model
from sam4em.models.info import SHARED_PARTS, SegmentationModel
from sam4em.models.registry import base_spec
from sam4em.models.unet import UNet2D, UNet3D
from sam4em.training.config import TrainConfig
from sam4em.training.methods import METHODS

__all__ = ["TrainableModel", "build_method", "is_clip_model"]

#: What `sam4em train` trains: a SAM4EM or one of the MONAI U-Net baselines.
TrainableModel = SAM4EM | UNet2D | UNet3D


def build_method(config: TrainConfig, class_names: Sequence[str], *, starts_from: SegmentationModel | None = None) -> TrainableModel:
    """The untrained model of `config.method`, one output channel per name in `class_names`.

    `starts_from`: the trained model of `config.init_from`. Whether the classes share the memory and the
    detail head, where the config leaves it unset, then follows that model, whose weights were trained
    so (its per-object memory, from Meta's weights, stays per object), rather than the base's weights;
    except that a joint decoder always gets the shared memory it needs.
    """
    spec = METHODS[config.method]
    base, options = config.model.base, config.model.build
    num_classes = len(class_names)
    image_size = options.image_size or base_spec(base).image_size
    if spec.architecture == "unet2d":
        return UNet2D(num_classes=num_classes, image_size=image_size, class_names=class_names)
    if spec.architecture == "unet3d":
        return UNet3D(
            num_classes=num_classes, image_size=image_size, clip_length=config.stage2.clip_length, class_names=class_names
        )
    # The method's switches over the config's options; `build_model` takes the classes from their names.
    fields = {k: v for k, v in {**asdict(options), **dict(spec.build)}.items() if k != "num_classes"}
    if isinstance(starts_from, SAM4EM):
        for option, part in SHARED_PARTS.items():
            # A joint decoder needs a shared memory whatever the other run had (`resolve_options` turns it on).
            if fields[option] is None and not (option == "shared_memory" and fields["joint_decoder"]):
                fields[option] = bool(getattr(starts_from.info.build_options, option)) and fields[part]
    return build_model(base, pretrained=config.model.pretrained, class_names=class_names, **fields)


def is_clip_model(model: TrainableModel, stage: int) -> bool:
    """Whether `stage` trains `model` on clips (memory stage, or a volumetric U-Net) rather than slices."""
    return stage == 2 or model.info.is_volumetric
