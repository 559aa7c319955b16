"""Open a prediction file for evaluation, whichever output type of `sam4em segment` it is.

A prediction is

* a `sam4em segment` output, known by the record in its attrs (:mod:`sam4em.io.output_record`):
  ``probs`` (one (Z, Y, X) array per class in a container: the container, or the output key inside
  it, is the prediction), ``labels`` (``k + 1`` for the k-th recorded class) or ``instances``
  (ids unique across classes, each class owning a recorded id range). Its classes are matched to
  the ground truth's by name (a single class also when the names differ), every class is
  evaluated in one call, and an unfinished (interrupted) output is refused;
* or any other (Z, Y, X) volume: a probability map, a boolean mask or an integer label map, scored
  as :func:`~sam4em.evaluation.evaluate_volumes` describes.

sam4em OME-Zarr outputs (``out.ome.zarr``: ``labels/<class>`` or ``probabilities/<class>``, see
:mod:`sam4em.io.ome_zarr_output`) are read the same way.

sam4em outputs are handed to evaluation as (C, Z, Y, X) views: floats in [0, 1] for probabilities
(uint8 ``round(p * 255)`` is scaled back), booleans per class for labels and instances.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from sam4em.io import Volume, VolumeError, list_volumes, open_volume
from sam4em.io.formats import format_for_suffix, suffix_of
from sam4em.io.ome_zarr_output import PROBABILITIES, is_ome_output, open_output
from sam4em.io.output_record import OutputRecord, read_output_record, require_complete

__all__ = ["ChannelStack", "ClassMasks", "Prediction", "open_prediction"]


class ChannelStack:
    """(C, Z, Y, X) view of C (Z, Y, X) volumes of equal shape, read ``[:, z0:z1]`` at a time.

    ``scale`` multiplies what is read (float32), e.g. ``1 / 255`` for uint8-stored probabilities.
    """

    def __init__(self, volumes: Sequence[Volume], *, scale: float | None = None) -> None:
        self.volumes = list(volumes)
        self.scale = scale
        self.path = volumes[0].path
        self.shape = (len(self.volumes), *tuple(int(s) for s in volumes[0].shape))
        self.dtype = np.dtype(np.float32) if scale is not None else np.dtype(volumes[0].dtype)

    def __getitem__(self, key: tuple[slice, slice]) -> NDArray[Any]:
        channels, z = key
        if channels != slice(None):
            raise IndexError("ChannelStack reads all channels at once: index it as [:, z0:z1]")
        block = np.stack([np.asarray(volume[z]) for volume in self.volumes])
        return block if self.scale is None else block.astype(np.float32) * np.float32(self.scale)


class ClassMasks:
    """(C, Z, Y, X) boolean view of a label or instance map: channel c is ``first_c <= value <= last_c``."""

    def __init__(self, volume: Volume, ranges: Sequence[tuple[int, int]]) -> None:
        self.volume = volume
        self.ranges = list(ranges)
        self.path = volume.path
        self.shape = (len(self.ranges), *tuple(int(s) for s in volume.shape))
        self.dtype = np.dtype(bool)

    def __getitem__(self, key: tuple[slice, slice]) -> NDArray[np.bool_]:
        channels, z = key
        if channels != slice(None):
            raise IndexError("ClassMasks reads all channels at once: index it as [:, z0:z1]")
        values = np.asarray(self.volume[z])
        return np.stack([(values >= first) & (values <= last) for first, last in self.ranges])


@dataclass(frozen=True)
class Prediction:
    """What evaluation scores: an array-like and, for sam4em outputs, the channel of each class."""

    array: Any
    #: class name -> channel of ``array``; None for volumes sam4em did not write.
    pred_classes: dict[str, int] | None
    record: OutputRecord | None


def _where(path: Path, key: str | None) -> str:
    return f"{path}:{key}" if key else str(path)


def _match(wanted: Sequence[str], recorded: Sequence[str], where: str) -> dict[str, int]:
    """Class name -> index among ``recorded``; one class matches one class whatever the names."""
    if len(wanted) == 1 and len(recorded) == 1:
        return {wanted[0]: 0}
    unknown = [name for name in wanted if name not in recorded]
    if unknown:
        raise VolumeError(
            f"{where}: holds the classes {', '.join(recorded)} (as `sam4em segment` recorded them), not "
            f"{', '.join(unknown)}; name the classes after them, e.g. --classes {recorded[0]}=CODE"
        )
    return {name: list(recorded).index(name) for name in wanted}


def _probability_arrays(
    path: Path, key: str | None, names: Sequence[str], stack: ExitStack, error: VolumeError
) -> Prediction:
    """The per-class probability arrays of a sam4em container output (under ``key`` if given)."""
    prefix = f"{key.strip('/')}/" if key else ""
    found: dict[str, tuple[Volume, OutputRecord]] = {}
    for item in list_volumes(path):
        inner = item[len(prefix) :] if item.startswith(prefix) else None
        if not inner or "/" in inner:
            continue
        volume = stack.enter_context(open_volume(path, item))
        record = read_output_record(volume.attrs)
        if record is not None and record.output_type == "probs":
            found[inner] = (volume, record)
    if not found:
        raise error
    order = next(iter(found.values()))[1].class_names
    recorded = sorted(found, key=lambda name: order.index(name) if name in order else len(order))
    index = _match(names, recorded, _where(path, key))
    chosen = [found[recorded[index[name]]] for name in names]
    for volume, record in chosen:
        require_complete(record, volume)
    return _stacked_probs([volume for volume, _ in chosen], chosen[0][1], names)


def _stacked_probs(volumes: list[Volume], record: OutputRecord, names: Sequence[str]) -> Prediction:
    scale = 1.0 / 255.0 if np.dtype(volumes[0].dtype) == np.uint8 else None
    return Prediction(ChannelStack(volumes, scale=scale), {name: i for i, name in enumerate(names)}, record)


def _sam4em_output(volume: Volume, record: OutputRecord, names: Sequence[str]) -> Prediction:
    require_complete(record, volume)
    where = _where(volume.path, volume.key)
    if record.output_type == "probs":
        # One class's array, opened by its key (or as the container's only array).
        own = str(volume.key or "").rsplit("/", 1)[-1] or record.class_names[0]
        _match(names, [own], where)
        return _stacked_probs([volume], record, names)
    recorded = record.class_names
    index = _match(names, recorded, where)
    if record.output_type == "labels":
        ranges = [(index[name] + 1, index[name] + 1) for name in names]
    elif record.output_type == "instances":
        if record.instance_ranges is None and len(recorded) > 1:
            raise VolumeError(
                f"{where}: is an instance output of several classes without their id ranges (written by an older "
                "sam4em); segment again with --output-type labels (or instances) to evaluate it"
            )
        all_ids = [(1, int(np.iinfo(np.dtype(volume.dtype)).max))]
        ranges = [(record.instance_ranges or all_ids)[index[name]] for name in names]
    else:
        raise VolumeError(f"{where}: unknown sam4em output type {record.output_type!r}; segment it again")
    return Prediction(ClassMasks(volume, ranges), {name: i for i, name in enumerate(names)}, record)


def _ome_output(path: Path, key: str | None, names: Sequence[str], stack: ExitStack) -> Prediction:
    """A sam4em OME-Zarr output: ``labels/<class>`` (0/1 masks or instance ids) or ``probabilities/<class>``;
    all its classes, or the one ``key`` names."""
    root = zarr.open_group(store=str(path), mode="r")
    prefix = PROBABILITIES if PROBABILITIES in root else "labels"
    group = root[prefix]
    if not isinstance(group, zarr.Group):
        raise VolumeError(f"{path}/{prefix}: is an array, not a sam4em output group; segment it again")
    holder = group if prefix == PROBABILITIES else group[sorted(group.group_keys())[0]]
    record = read_output_record(holder.attrs.asdict())
    if record is None:
        raise VolumeError(f"{path}: an OME-Zarr segmentation output without its sam4em record; segment it again")
    recorded = [key.strip("/").rsplit("/", 1)[-1]] if key else record.class_names
    index = _match(names, recorded, _where(path, key))
    volumes = [stack.enter_context(open_output(path, f"{prefix}/{recorded[index[name]]}")) for name in names]
    require_complete(record, volumes[0])
    if prefix == PROBABILITIES:
        return _stacked_probs(volumes, record, names)
    # Each class apart: 0/1 for labels, its own instance ids for instances; non-zero is the class.
    return Prediction(ChannelStack(volumes), {name: i for i, name in enumerate(names)}, record)


def open_prediction(
    path: str | os.PathLike[str], key: str | None, names: Sequence[str], stack: ExitStack
) -> Prediction:
    """Open the prediction at ``path`` (``key`` inside a container) for the ground-truth classes ``names``.

    Volumes are closed by ``stack``. Raises VolumeError (one line) for an unfinished sam4em output,
    classes it does not hold, or a container whose arrays are not one volume nor sam4em probabilities.
    """
    if is_ome_output(path) and (key is None or key.strip("/").startswith(("labels/", f"{PROBABILITIES}/"))):
        return _ome_output(Path(path), key, names, stack)
    try:
        volume = stack.enter_context(open_volume(path, key))  # the spec as given: precomputed:// stays a URL
    except VolumeError as error:
        target = Path(path)
        fmt = format_for_suffix(suffix_of(target))
        if fmt is None or not fmt.container or not target.exists():
            raise
        return _probability_arrays(target, key, names, stack, error)
    record = read_output_record(volume.attrs)
    if record is None:
        return Prediction(volume, None, None)
    return _sam4em_output(volume, record, names)
