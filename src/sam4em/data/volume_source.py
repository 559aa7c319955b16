"""Where a training volume lives (:class:`VolumeSource`) and which of its slices are annotated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sam4em.data.class_mapping import ClassMapping


@dataclass(frozen=True)
class VolumeSource:
    """Where one training volume lives and which part of it a split may use.

    ``z_range`` is ``(start, stop)`` (stop exclusive) of the slices this split may sample;
    ``None`` means all slices. Image and label volumes must have the same (Z, Y, X) shape.
    """

    image_path: str | Path
    label_path: str | Path
    mapping: ClassMapping
    image_key: str | None = None
    label_key: str | None = None
    z_range: tuple[int, int] | None = None
    name: str = ""
    # Sparse annotation: z indices of the annotated slices (the others only give context); None: all.
    labelled_slices: tuple[int, ...] | None = None
    # Read labels whose Zarr store lacks chunks (as the fill value) instead of refusing them.
    allow_missing_chunks: bool = False


def resolve_labelled_slices(
    spec: int | Sequence[int] | None, train_range: tuple[int, int], volume_range: tuple[int, int]
) -> tuple[int, ...] | None:
    """The annotated slices of a volume from a config's ``labelled_slices``.

    An int N: N evenly spaced slices of the training part `train_range` (the centres of N equal
    blocks, so 1 is its middle slice). A list: those z indices, which must lie in `volume_range`
    (training or validation part alike). None: every slice is annotated.
    """
    if spec is None:
        return None
    if isinstance(spec, int):
        start, stop = train_range
        if not 1 <= spec <= stop - start:
            raise ValueError(f"labelled_slices: {spec} must be between 1 and the {stop - start} training slices")
        return tuple(int(start + (i + 0.5) * (stop - start) / spec) for i in range(spec))
    outside = [z for z in spec if not volume_range[0] <= z < volume_range[1]]
    if not spec or outside:
        raise ValueError(
            f"labelled_slices: {list(spec)} must be a non-empty list of slices in {volume_range[0]}..{volume_range[1] - 1}"
        )
    return tuple(sorted({int(z) for z in spec}))


def labelled_in(source: VolumeSource, z_range: tuple[int, int]) -> tuple[int, ...] | None:
    """The annotated slices of `source` inside `z_range` (sorted), None when all are annotated."""
    if source.labelled_slices is None:
        return None
    inside = tuple(sorted({int(z) for z in source.labelled_slices if z_range[0] <= z < z_range[1]}))
    if not inside:
        raise ValueError(
            f"{source.image_path}: none of the labelled slices {list(source.labelled_slices)} lies in z-range "
            f"{z_range[0]}-{z_range[1]}; annotate a slice there or change labelled_slices"
        )
    return inside
