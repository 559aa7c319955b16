"""`check_model_record`: the ``model`` section of a run folder's ``config.yaml``, checked before use.

A hand-edited or damaged record is refused in one line naming the file and the fix, instead of
failing later inside model construction: a missing ``base`` or ``weights`` entry, a ``build`` key no
model takes, or a value no model can have (an ``image_size`` above 4096 or, for a SAM2 base, not a
multiple of 32; a class count below 1, a ``base_weights`` that is not a path or hub id, class names
that are not one string per class).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from sam4em.models.checkpoint_files import CheckpointError
from sam4em.models.encoder_weights import is_encoder_folder
from sam4em.models.info import BuildOptions

__all__ = ["check_model_record"]

BASELINES = ("unet2d", "unet3d")
#: What `sam4em.models.serialization.model_record` writes for a MONAI baseline.
_BASELINE_BUILD = frozenset({"num_classes", "image_size", "clip_length"})
_WEIGHTS = ("adapters", "full")
#: SAM2 runs at 1024 px; far beyond this the model would not fit in any memory (4096 px: 16x the tokens).
_MAX_IMAGE_SIZE = 4096


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_model_record(record: Any, config: Path) -> dict[str, Any]:
    """`record` (the ``model`` section of `config`) if a model can be built from it, else `CheckpointError`."""
    fix = "restore config.yaml from the run folder it came from, or retrain"
    if not isinstance(record, dict) or not isinstance(record.get("base"), str):
        if is_encoder_folder(config.parent):
            raise CheckpointError(
                f"{config.parent}: is an image encoder (from `sam4em pretrain` or `export-encoder`) to train from, "
                f"not a segmentation model; train one on it (model.base: {config.parent}) and segment with that run"
            )
        raise CheckpointError(f"{config}: no 'model.base' entry; is this a sam4em run folder?")
    if record.get("weights") not in _WEIGHTS:
        found = f"is {record['weights']!r}" if "weights" in record else "is missing"
        raise CheckpointError(
            f"{config}: 'model.weights' {found}; it says which tensors model.safetensors holds "
            f"('adapters' or 'full'); {fix}"
        )
    build = record.get("build") or {}
    if not isinstance(build, dict):
        raise CheckpointError(f"{config}: 'model.build' must be a mapping of build options; {fix}")
    known = _BASELINE_BUILD if record["base"] in BASELINES else {f.name for f in fields(BuildOptions)}
    unknown = sorted(set(build) - known)
    if unknown:
        raise CheckpointError(
            f"{config}: unknown key(s) {', '.join(unknown)} in 'model.build' (known: {', '.join(sorted(known))}); {fix}"
        )
    size = build.get("image_size")
    step = 1 if record["base"] in BASELINES else 32  # Hiera's coarsest stride
    if size is not None and not (_positive_int(size) and size % step == 0 and size <= _MAX_IMAGE_SIZE):
        raise CheckpointError(
            f"{config}: 'model.build.image_size' is {size!r}; it must be a multiple of {step} up to "
            f"{_MAX_IMAGE_SIZE} (SAM2 uses 1024); {fix}"
        )
    if "num_classes" in build and not _positive_int(build["num_classes"]):
        raise CheckpointError(f"{config}: 'model.build.num_classes' is {build['num_classes']!r}, not a count; {fix}")
    _check_class_names(record.get("class_names"), build.get("num_classes", 1), config, fix)
    if not isinstance(record.get("base_weights"), (str, type(None))):
        raise CheckpointError(
            f"{config}: 'model.base_weights' must be a hub id, a folder or a .pt file, not {record['base_weights']!r}"
        )
    return record


def _check_class_names(names: Any, count: Any, config: Path, fix: str) -> None:
    """``model.class_names``: absent or empty (unnamed classes), or one string per class."""
    if names is None or names == []:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{config}: 'model.class_names' must be a list of names, not {names!r}; {fix}")
    if len(names) != count:
        raise CheckpointError(
            f"{config}: 'model.class_names' has {len(names)} names ({', '.join(names)}) for "
            f"{count} classes (model.build.num_classes); {fix}"
        )
