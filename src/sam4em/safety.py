"""Checks that protect data: run before heavy work, so a bad argument costs seconds, not a model load.

`check_segment_args` is what ``sam4em segment`` runs first: the device exists, the input opens (file,
key), the output is neither the input nor under a file and is not replaced without ``--overwrite``, the
classes and tile fit the model, and the output fits on its disk. Every refusal is one line naming the
file, the problem and the fix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam4em.claim import refuse_file_parent
from sam4em.devices import resolve_device
from sam4em.io import VolumeError, open_volume, resolve_path

#: Bytes per voxel and class of each ``--output-type``; probabilities are stored as float16 by default,
#: instances as uint32 beside a temporary uint8 label store (see `sam4em.inference.streaming`).
_BYTES_PER_VOXEL = {"probs": np.dtype(np.float16).itemsize, "labels": 1, "instances": 4 + 1}


def refuse_same_path(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Refuse an output that is the input (also through a symlink or a hard link)."""
    source, target = Path(input_path), Path(output_path)
    same = resolve_path(source) == resolve_path(target)  # a link loop: one-line VolumeError
    if not same and source.exists() and target.exists():
        same = os.path.samefile(source, target)
    if same:
        raise VolumeError(f"{target}: is the input volume; write the result to another file")


def estimate_output_bytes(shape: Sequence[int], output_type: str, num_classes: int) -> int:
    """Uncompressed size of a segmentation of a (Z, Y, X) volume: shape x dtype x classes."""
    voxels = int(np.prod([int(s) for s in shape], dtype=np.int64))
    classes = num_classes if output_type == "probs" else 1
    return voxels * classes * _BYTES_PER_VOXEL[output_type]


def check_free_space(output_path: str | os.PathLike[str], needed: int) -> None:
    """Refuse to start an output of `needed` bytes on a disk with less free space."""
    target = Path(output_path).absolute()
    # The output and its missing parent folders are created later: measure the nearest existing folder.
    parent = next(p for p in target.parents if p.exists())
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise VolumeError(
            f"{target}: needs up to {_size(needed)} (uncompressed) but {parent} has only {_size(free)} free; "
            "free some space or write the output to another disk"
        )


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def model_classes_and_size(model: str | os.PathLike[str]) -> tuple[list[str], int]:
    """(class names, input size in pixels) of a run folder or model name, without building the model."""
    from sam4em.models.registry import get_spec
    from sam4em.models.serialization import read_model_record

    path = Path(model)
    if path.is_dir():
        record = read_model_record(path)
        build = record.get("build") or {}
        base_size = None if record["base"] in ("unet2d", "unet3d") else get_spec(record["base"]).image_size
        size = int(build.get("image_size") or base_size)
        count = int(build.get("num_classes", 1))
        names = [str(n) for n in record.get("class_names") or []]
    else:
        size, count, names = get_spec(str(model)).image_size, 1, []
    # As `sam4em.inference.streaming` names them when a model carries no (or wrong) names.
    if len(names) != count:
        names = [f"class{i + 1}" for i in range(count)]
    return names, size


def check_segment_args(
    input_path: str,
    output_path: str,
    model: str,
    *,
    input_key: str | None,
    classes: Sequence[str] | None,
    output_type: str,
    tile_shape: tuple[int, int] | None,
    halo: tuple[int, int] | None,
    overwrite: bool,
    resume: bool,
    device: str | None = None,
) -> None:
    """Everything about a segmentation request that can be refused before the model is loaded."""
    from sam4em.inference.predictor import plan_tiling

    resolve_device(device)
    refuse_same_path(input_path, output_path)
    refuse_file_parent(output_path)
    with open_volume(input_path, key=input_key) as volume:  # read-only; errors name the file and key
        shape = tuple(int(s) for s in volume.shape)
    exists = Path(output_path).exists()
    if exists and not (overwrite or resume):
        raise VolumeError(
            f"{output_path}: already exists (pass --overwrite to replace it, or --resume to finish an "
            "interrupted run)"
        )
    names, size = model_classes_and_size(model)
    unknown = [c for c in classes or [] if c not in names]
    if unknown or (classes is not None and not classes):
        raise ValueError(
            f"{model}: unknown class(es) {', '.join(map(repr, unknown)) or '(none given)'} in --classes; "
            f"the model predicts {', '.join(names)}"
        )
    try:
        plan_tiling(shape[1:], size, tile_shape, halo)
    except ValueError as error:
        raise ValueError(f"{model}: {error}") from None
    if not (resume and exists):  # a resumed output already holds its finished blocks
        count = len(set(classes)) if classes else len(names)
        check_free_space(output_path, estimate_output_bytes(shape, output_type, count))
