"""What a model declares about itself (class names, input size), read without building it.

Checks of a segmentation request (:func:`sam4em.inference.request.check_request`) use it before the
slow model load, so a bad ``--classes`` or ``--tile`` costs seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sam4em.models.info import SegmentationModel
from sam4em.models.record_checks import BASELINES
from sam4em.models.registry import get_spec
from sam4em.models.serialization import loadable_spec, read_model_record

__all__ = ["declared_classes_and_size", "model_class_names", "named_classes"]


def named_classes(names: Sequence[object], count: int) -> list[str]:
    """``names`` as strings, or ``class1..classN`` when a model carries no (or wrong) names."""
    if len(names) == count:
        return [str(n) for n in names]
    return [f"class{i + 1}" for i in range(count)]


def model_class_names(model: SegmentationModel) -> list[str]:
    """The class names of a loaded model, in its output channel order."""
    return named_classes(model.info.class_names, model.num_classes)


def declared_classes_and_size(model: SegmentationModel | str | os.PathLike[str]) -> tuple[list[str], int]:
    """(class names, input size in pixels) of a loaded model, run folder or model name, without building it.

    A name `load_model` would refuse (not a test model) is refused here already, before any slow work."""
    if isinstance(model, SegmentationModel):
        return model_class_names(model), model.image_size
    path = Path(model)
    if path.is_dir():
        record = read_model_record(path)
        build = record.get("build") or {}
        if record["base"] in BASELINES:  # baselines record their input size
            size = int(build["image_size"])
        else:
            size = int(build.get("image_size") or get_spec(record["base"]).image_size)
        return named_classes(record.get("class_names") or [], int(build.get("num_classes", 1))), size
    return named_classes([], 1), loadable_spec(os.fspath(model)).image_size
