"""Train / validation / test volumes for a dataset, with validation held out by z-range.

Validation data come from the training volumes only, never from a test volume: model and
threshold selection on test data would make the reported test scores optimistic. Within a
training volume the validation part is one contiguous block of slices at the end (or
start), never interleaved slices: neighbouring EM sections look nearly alike, so
interleaving would validate on near-copies of training slices. For the same reason a ``gap``
of unused slices separates the two blocks; with clips of K slices choose ``gap >= K`` so that
no training clip lies within one clip length of a validation clip. Clips themselves never
straddle the boundary, since :mod:`sam4em.data.samples` keeps each clip inside its
source's z-range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

from sam4em.data.class_mapping import ClassMapping
from sam4em.data.samples import VolumeSource
from sam4em.datasets import DatasetSpec, LocalDataset, get_dataset

ZRange = tuple[int, int]


def split_z(
    num_slices: int,
    val_fraction: float = 0.15,
    position: Literal["end", "start"] = "end",
    gap: int = 8,
) -> tuple[ZRange, ZRange]:
    """Split ``num_slices`` slices into contiguous train and validation z-ranges.

    The validation block has ``max(1, round(num_slices * val_fraction))`` slices and sits at
    the ``position`` end of the volume; ``gap`` slices between the blocks are used by neither.
    Ranges are ``(start, stop)`` with ``stop`` exclusive. Returns ``(train, val)``; raises
    ``ValueError`` when fewer than one training slice would remain.
    """
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    num_val = max(1, round(num_slices * val_fraction))
    num_train = num_slices - num_val - gap
    if num_train < 1:
        raise ValueError(
            f"{num_slices} slices leave no training slices after {num_val} validation slices and a gap of "
            f"{gap}; lower val_fraction or gap"
        )
    if position == "end":
        return (0, num_train), (num_slices - num_val, num_slices)
    if position == "start":
        return (num_val + gap, num_slices), (0, num_val)
    raise ValueError(f"position must be 'end' or 'start', got {position!r}")


@dataclass(frozen=True)
class DatasetSplits:
    """Volume sources of each role; ``test`` holds only test splits with public labels."""

    train: tuple[VolumeSource, ...]
    val: tuple[VolumeSource, ...]
    test: tuple[VolumeSource, ...]


def dataset_sources(
    dataset: LocalDataset | DatasetSpec | str,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.15,
    position: Literal["end", "start"] = "end",
    gap: int = 8,
    mapping: ClassMapping | None = None,
) -> DatasetSplits:
    """Train, validation and test :class:`VolumeSource` lists of a registered dataset.

    ``dataset`` is a :class:`LocalDataset`, or a spec / name resolved with
    :func:`sam4em.datasets.get_dataset` in ``data_dir`` (else ``$SAM4EM_DATA_DIR``). Splits
    with role ``"val"`` (an official validation set) are used as validation as they are;
    otherwise each ``"train"`` split is cut with :func:`split_z`. ``"test"`` splits never
    contribute to train or val; those without public labels are left out. ``mapping``
    overrides the registry's class mapping (e.g. to train on a subset of classes).
    """
    if not isinstance(dataset, LocalDataset):
        dataset = get_dataset(dataset if isinstance(dataset, str) else dataset.name, data_dir=data_dir)
    spec = dataset.spec
    mapping = spec.class_mapping() if mapping is None else mapping
    official_val = any(split.role == "val" and split.label is not None for split in spec.splits)
    train: list[VolumeSource] = []
    val: list[VolumeSource] = []
    test: list[VolumeSource] = []
    for split in spec.splits:
        if split.label is None:
            continue
        source = VolumeSource(
            image_path=dataset.path(split.name, "image"),
            label_path=dataset.path(split.name, "label"),
            mapping=mapping,
            image_key=split.image.key,
            label_key=split.label.key,
            name=f"{spec.name}/{split.name}",
        )
        if split.role == "test":
            test.append(source)
        elif split.role == "val":
            val.append(source)
        elif official_val:
            train.append(source)
        else:
            num_slices = int(dataset.open(split.name, "label").shape[0])
            train_z, val_z = split_z(num_slices, val_fraction, position, gap)
            train.append(replace(source, z_range=train_z, name=f"{source.name}[{train_z[0]}:{train_z[1]}]"))
            val.append(replace(source, z_range=val_z, name=f"{source.name}[{val_z[0]}:{val_z[1]}]"))
    return DatasetSplits(tuple(train), tuple(val), tuple(test))
